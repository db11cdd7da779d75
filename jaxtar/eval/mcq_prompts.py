"""Multiple-choice prompts for scoring: k-shot prompts, the answer letters' token ids, tokenised batches.

Prompts follow the lm-evaluation-harness convention the TAR paper uses: k solved examples of the same subject, then
the question and its choices, ending in ``Answer:`` (`jaxtar.data.mcq.build_mcq_prompt`). They are tokenised
once and left-padded into an `MCQBatch` (``Answer:`` always the last token) that `jaxtar.eval.mcq.score_mcq`
scores. Retain sets drop the forget domain's subjects (docs/datasets.md#mmlu-subjects).

Example:
    >>> from jaxtar.toy import toy_world
    >>> batch = prepare_mcq(toy_world().tokenizer, toy_world().retain_mcq[:8])
    >>> batch.input_ids.shape[0], batch.chance
    (8, 0.25)
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxtar.data.batching import pad_id
from jaxtar.data.mcq import MCQItem, build_mcq_prompt, letter_token_ids
from jaxtar.data.sources import MMLU_BIO_SUBJECTS, MMLU_CYBER_SUBJECTS

DOMAIN_SUBJECTS = {"bio": MMLU_BIO_SUBJECTS, "cyber": MMLU_CYBER_SUBJECTS}


def excluded_subjects(domain: str | Sequence[str] | None) -> tuple[str, ...]:
    """Subjects left out of the retain score: ``"bio"`` / ``"cyber"`` (docs/datasets.md#mmlu-subjects), a list, or None.

    Example:
        >>> excluded_subjects("cyber")
        ('computer_security',)
    """
    if domain is None:
        return ()
    if isinstance(domain, str):
        if domain not in DOMAIN_SUBJECTS:
            raise ValueError(f"unknown forget domain {domain!r}; known: {sorted(DOMAIN_SUBJECTS)} (or pass subjects)")
        return DOMAIN_SUBJECTS[domain]
    return tuple(domain)


def mcq_prompts(items: Sequence[MCQItem], shots: int = 0, shot_pool: Sequence[MCQItem] = ()) -> list[str]:
    """k-shot prompts: each item preceded by the first ``shots`` pool items of its subject (itself excluded).

    Example:
        >>> mcq_prompts([MCQItem("q?", ("a", "b"), 0)])[0].endswith("Answer:")
        True
    """
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    prompts = []
    for item in items:
        examples = [s for s in shot_pool if s.subject == item.subject and s != item][:shots]
        if len(examples) < shots:
            raise ValueError(
                f"{shots}-shot prompts need {shots} examples of subject {item.subject!r} in the shot pool, "
                f"found {len(examples)}"
            )
        prompts.append(build_mcq_prompt(item, examples))
    return prompts


@dataclasses.dataclass(frozen=True, eq=False)
class MCQBatch:
    """Tokenised, left-padded prompts ``[N, T]`` with answers, choice counts and letter ids."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    answers: np.ndarray
    num_choices: np.ndarray
    letter_ids: tuple[int, ...]
    subjects: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.answers)

    @property
    def chance(self) -> float:
        """Expected accuracy of a uniform random guess."""
        return float(np.mean(1.0 / self.num_choices)) if len(self) else float("nan")


def round_up(n: int, multiple: int = 16) -> int:
    """``n`` rounded up to a multiple (at least one multiple): few distinct shapes, few compiles."""
    return max(multiple, -(-n // multiple) * multiple)


def prepare_mcq(
    tokenizer: Any,
    items: Sequence[MCQItem],
    *,
    shots: int = 0,
    shot_pool: Sequence[MCQItem] = (),
    exclude_subjects: str | Sequence[str] | None = None,
    max_length: int | None = None,
) -> MCQBatch:
    """Prompts tokenised once for repeated scoring.

    Args:
        tokenizer: the model's tokenizer.
        items: the questions.
        shots, shot_pool: k-shot examples (see `mcq_prompts`).
        exclude_subjects: subjects to drop (``"bio"``, ``"cyber"`` or a list).
        max_length: row length; default: the longest prompt rounded up to a multiple of 16. Longer prompts lose
            their *beginning* (a warning says how many), so ``Answer:`` is always the last token.

    Example:
        >>> from jaxtar.toy import toy_world
        >>> world = toy_world()
        >>> batch = prepare_mcq(world.tokenizer, world.retain_mcq[:8])
        >>> batch.input_ids.shape[0]
        8
    """
    dropped = set(excluded_subjects(exclude_subjects))
    items = [i for i in items if i.subject not in dropped]
    num_choices = max((len(i.choices) for i in items), default=4)
    letters = letter_token_ids(tokenizer, num_choices)
    encoded = [list(ids) for ids in tokenizer(mcq_prompts(items, shots, shot_pool))["input_ids"]] if items else []
    longest = max((len(e) for e in encoded), default=1)
    length = round_up(longest) if max_length is None else max_length
    cut = sum(len(e) > length for e in encoded)
    if cut:
        warnings.warn(f"{cut} of {len(items)} prompts exceed {length} tokens; their beginnings are cut", stacklevel=2)
    ids = np.full((len(items), length), pad_id(tokenizer), np.int32)
    mask = np.zeros((len(items), length), np.int32)
    for row, seq in enumerate(encoded):
        seq = seq[-length:]
        ids[row, length - len(seq) :] = seq
        mask[row, length - len(seq) :] = 1
    return MCQBatch(
        input_ids=ids,
        attention_mask=mask,
        answers=np.asarray([i.answer for i in items], np.int32),
        num_choices=np.asarray([len(i.choices) for i in items], np.int32),
        letter_ids=letters,
        subjects=tuple(i.subject for i in items),
    )
