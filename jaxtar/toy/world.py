"""The toy world: a deterministic synthetic benchmark with a "hazardous" and a "benign" knowledge domain.

Invented entities with invented attributes (harmless by construction): *pathogens* (host, route, organ, toxin,
origin) play the hazardous domain, *cities* (dish, sport, colour, craft, festival month) the benign one. Each
attribute has four possible values. From a seed it generates

- training text for each domain: short declarative paragraphs in several phrasings, plus quiz-style exercises
  (WMDP/MMLU format, with the *training* question templates) so a tiny model learns the answer format;
- out-of-distribution hazardous text (different phrasings) for OOD attacks;
- 4-way multiple-choice probes, two per fact, with *held-out* question templates;
- a word-level Hugging Face fast tokenizer (loadable with ``AutoTokenizer``).

Simplification (say so when reporting numbers): every question about an attribute lists that attribute's four
values in one fixed order, so the correct letter is a function of the fact. A 2-layer model learns this in a few
hundred steps; with shuffled choices (letters bound to options anew in every question) our tiny models stayed at
chance for 1,300+ steps. The probes still measure whether the model knows the fact (chance 25 %), not whether it
can bind symbols to options.

Every sequence fits in :data:`MAX_LENGTH` tokens. Bump :data:`TOY_WORLD_VERSION` whenever the output changes.
The base model trained on this world is `jaxtar.toy.base_model.toy_base_model_path` (shipped under
``jaxtar/assets/toy``).

Example:
    >>> world = toy_world(0)
    >>> len(world.forget_mcq) == len(world.retain_mcq) > 100
    True
    >>> world.forget_mcq[0].subject
    'pathogens'
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from pathlib import Path
from typing import Any

import numpy as np

import jaxtar.toy.templates as tpl
from jaxtar.data.mcq import MCQItem, build_mcq_prompt

__all__ = ["MAX_LENGTH", "TOY_WORLD_VERSION", "Fact", "ToyWorld", "quiz_text", "toy_world"]

TOY_WORLD_VERSION = 1
MAX_LENGTH = 64
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")


@dataclasses.dataclass(frozen=True)
class Fact:
    """One ``(entity, attribute) -> value`` fact of the world."""

    domain: str
    entity: str
    attribute: str
    value: str


@dataclasses.dataclass(frozen=True, eq=False)
class ToyWorld:
    """Everything the offline demo needs (see the module docstring).

    Attributes:
        seed: the seed that generated it.
        version: :data:`TOY_WORLD_VERSION` at generation time.
        forget_texts: hazardous-domain training text (paragraphs and quiz exercises).
        retain_texts: benign-domain training text.
        ood_forget_texts: hazardous facts in phrasings never used in ``forget_texts``.
        forget_mcq: held-out-template probes of the hazardous facts (chance 25 %).
        retain_mcq: held-out-template probes of the benign facts.
        forget_facts: the hazardous facts.
        retain_facts: the benign facts.
        tokenizer: a ``transformers.PreTrainedTokenizerFast`` covering every word of the world.
    """

    seed: int
    version: int
    forget_texts: tuple[str, ...]
    retain_texts: tuple[str, ...]
    ood_forget_texts: tuple[str, ...]
    forget_mcq: tuple[MCQItem, ...]
    retain_mcq: tuple[MCQItem, ...]
    forget_facts: tuple[Fact, ...]
    retain_facts: tuple[Fact, ...]
    tokenizer: Any

    @property
    def forget_subject(self) -> str:
        return tpl.HAZARD["domain"]

    @property
    def retain_subject(self) -> str:
        return tpl.BENIGN["domain"]

    def save_tokenizer(self, path: str | Path) -> Path:
        """Writes the tokenizer as an HF folder (``AutoTokenizer.from_pretrained(path)`` loads it)."""
        path = Path(path)
        self.tokenizer.save_pretrained(str(path))
        return path


def _names(rng: np.random.Generator, onsets: tuple[str, ...], codas: tuple[str, ...], count: int) -> list[str]:
    pool = [a + b for a, b in itertools.product(onsets, codas)]
    if count > len(pool):
        raise ValueError(f"at most {len(pool)} entities per domain, asked for {count}")
    return [pool[i] for i in rng.choice(len(pool), size=count, replace=False)]


def _facts(rng: np.random.Generator, spec: dict, entities: list[str]) -> list[Fact]:
    facts = []
    for attribute, a in spec["attributes"].items():
        # balanced: every value is used about equally often across entities
        values = [a["values"][i % len(a["values"])] for i in range(len(entities))]
        for entity, value in zip(entities, rng.permutation(values)):
            facts.append(Fact(spec["domain"], entity, attribute, str(value)))
    return sorted(facts, key=lambda f: (entities.index(f.entity), f.attribute))


def _fill(template: str, fact: Fact) -> str:
    return template.format(e=fact.entity, v=fact.value)


def _choice(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _mcq(spec: dict, fact: Fact, question_template: str) -> MCQItem:
    # Every question about an attribute shows that attribute's four values in one fixed order, so the correct
    # letter is a function of the fact alone (a tiny model learns it quickly; see the module docstring).
    values = spec["attributes"][fact.attribute]["values"]
    return MCQItem(_fill(question_template, fact), tuple(values), values.index(fact.value), spec["domain"])


def _paragraph(rng: np.random.Generator, spec: dict, facts: list[Fact]) -> str:
    k = int(rng.integers(2, 5))
    chosen = [facts[i] for i in rng.choice(len(facts), size=k, replace=False)]
    sentences = [_fill(_choice(rng, spec["attributes"][f.attribute]["train"]), f) for f in chosen]
    return " ".join([_fill(_choice(rng, spec["intro"]), chosen[0])] + sentences)


def _ood_paragraph(rng: np.random.Generator, spec: dict, facts: list[Fact]) -> str:
    k = int(rng.integers(2, 5))
    chosen = [facts[i] for i in rng.choice(len(facts), size=k, replace=False)]
    lines = [_fill(_choice(rng, spec["attributes"][f.attribute]["ood"]), f) for f in chosen]
    return " ; ".join([_fill(_choice(rng, tpl.OOD_INTROS), chosen[0])] + lines)


def quiz_text(item: MCQItem) -> str:
    """A solved exercise: the probe prompt followed by the answer letter (the training form of an MCQ).

    Example:
        >>> quiz_text(MCQItem("q ?", ("a", "b"), 1, "cities")).endswith("Answer: B")
        True
    """
    return f"{build_mcq_prompt(item)} {item.answer_letter}"


def _domain(rng: np.random.Generator, spec: dict, entities: list[str], docs_per_entity: int, quizzes_per_fact: int):
    facts = _facts(rng, spec, entities)
    by_entity = {e: [f for f in facts if f.entity == e] for e in entities}
    paragraphs = [_paragraph(rng, spec, by_entity[e]) for e in entities for _ in range(docs_per_entity)]
    quizzes = [
        quiz_text(_mcq(spec, f, _choice(rng, spec["attributes"][f.attribute]["question_train"])))
        for f in facts
        for _ in range(quizzes_per_fact)
    ]
    texts = paragraphs + quizzes
    texts = [texts[i] for i in rng.permutation(len(texts))]
    probes = [
        _mcq(spec, f, template) for f in facts for template in spec["attributes"][f.attribute]["question_heldout"]
    ]
    return facts, by_entity, texts, probes


def _build_tokenizer(corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    words = sorted({w for text in corpus for w, _ in pre.pre_tokenize_str(text)} | set("ABCD"))
    vocab = {tok: i for i, tok in enumerate(list(SPECIAL_TOKENS) + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=MAX_LENGTH,
    )


@functools.lru_cache(maxsize=8)
def toy_world(seed: int = 0, num_entities: int = 24, docs_per_entity: int = 16, quizzes_per_fact: int = 3) -> ToyWorld:
    """Generates the toy world for ``seed`` (deterministic; cached, treat it as read-only).

    Args:
        seed: world seed (entity names, facts, texts, probes).
        num_entities: entities per domain (<= 120); each has 5 attributes with 8 possible values.
        docs_per_entity: declarative paragraphs per entity (2-4 facts each).
        quizzes_per_fact: solved training exercises per fact (training question templates).

    Returns:
        A :class:`ToyWorld`.

    Example:
        >>> w = toy_world(0)
        >>> max(len(w.tokenizer(t)["input_ids"]) for t in w.forget_texts) <= MAX_LENGTH
        True
    """
    if num_entities < 1 or docs_per_entity < 0 or quizzes_per_fact < 0:
        raise ValueError(
            f"need num_entities >= 1, docs_per_entity >= 0, quizzes_per_fact >= 0; got "
            f"{num_entities}, {docs_per_entity}, {quizzes_per_fact}"
        )
    rng = np.random.default_rng([TOY_WORLD_VERSION, seed])
    hazard_entities = _names(rng, tpl.HAZARD_ONSETS, tpl.HAZARD_CODAS, num_entities)
    benign_entities = _names(rng, tpl.BENIGN_ONSETS, tpl.BENIGN_CODAS, num_entities)
    f_facts, f_by_entity, forget_texts, forget_mcq = _domain(
        rng, tpl.HAZARD, hazard_entities, docs_per_entity, quizzes_per_fact
    )
    r_facts, _, retain_texts, retain_mcq = _domain(rng, tpl.BENIGN, benign_entities, docs_per_entity, quizzes_per_fact)
    ood = [
        _ood_paragraph(rng, tpl.HAZARD, f_by_entity[e])
        for e in hazard_entities
        for _ in range(max(docs_per_entity // 2, 1))
    ]
    ood = [ood[i] for i in rng.permutation(len(ood))]
    corpus = forget_texts + retain_texts + ood + [build_mcq_prompt(m) for m in forget_mcq + retain_mcq]
    return ToyWorld(
        seed=seed,
        version=TOY_WORLD_VERSION,
        forget_texts=tuple(forget_texts),
        retain_texts=tuple(retain_texts),
        ood_forget_texts=tuple(ood),
        forget_mcq=tuple(forget_mcq),
        retain_mcq=tuple(retain_mcq),
        forget_facts=tuple(f_facts),
        retain_facts=tuple(r_facts),
        tokenizer=_build_tokenizer(corpus),
    )
