"""The toy world: determinism, held-out probes, correct answers, domain separation, the HF tokenizer."""

import collections
import re

import pytest

from jaxtar.data.mcq import build_mcq_prompt
from jaxtar.toy import MAX_LENGTH, TOY_WORLD_VERSION, toy_world
from jaxtar.toy import templates as tpl


@pytest.fixture(scope="module")
def world():
    return toy_world(0)


def test_deterministic_and_seeded(world):
    fresh = toy_world.__wrapped__(0)  # bypass the cache
    assert fresh.forget_texts == world.forget_texts and fresh.retain_mcq == world.retain_mcq
    assert fresh.tokenizer.get_vocab() == world.tokenizer.get_vocab()
    other = toy_world.__wrapped__(1)
    assert other.forget_facts != world.forget_facts and other.forget_texts != world.forget_texts
    assert world.version == TOY_WORLD_VERSION and world.seed == 0


def test_probes_are_correct_balanced_and_held_out(world):
    facts = {(f.entity, f.attribute): f.value for f in world.forget_facts + world.retain_facts}
    spec_of = {"pathogens": tpl.HAZARD, "cities": tpl.BENIGN}
    corpus = "\n".join(world.forget_texts + world.retain_texts + world.ood_forget_texts)
    for items, subject in ((world.forget_mcq, "pathogens"), (world.retain_mcq, "cities")):
        assert len(items) == 2 * len(world.forget_facts)  # two held-out templates per fact of the domain
        assert collections.Counter(i.answer for i in items).most_common()[-1][1] > len(items) / 8  # all letters used
        for item in items:
            assert item.subject == subject and len(set(item.choices)) == 4
            entity = next(w for w in re.findall(r"\w+", item.question) if any(e == w for e, _ in facts))
            attribute = next(
                a for a, s in spec_of[subject]["attributes"].items() if set(item.choices) <= set(s["values"])
            )
            assert item.choices[item.answer] == facts[(entity, attribute)]
            assert item.question not in corpus  # held-out phrasing: never seen in training text


def test_training_text_states_only_true_facts(world):
    corpus = "\n".join(world.forget_texts + world.retain_texts)
    for facts, spec in ((world.forget_facts, tpl.HAZARD), (world.retain_facts, tpl.BENIGN)):
        for fact in facts:
            templates = spec["attributes"][fact.attribute]["train"]
            assert any(t.format(e=fact.entity, v=fact.value) in corpus for t in templates)
            for wrong in spec["attributes"][fact.attribute]["values"]:
                if wrong != fact.value:
                    assert not any(t.format(e=fact.entity, v=wrong) + " " in corpus + " " for t in templates)


def test_domains_are_separate_and_ood_text_is_rephrased(world):
    hazard = {f.entity for f in world.forget_facts}
    benign = {f.entity for f in world.retain_facts}
    assert len(hazard) == len(benign) == 24 and not hazard & benign
    words = lambda texts: {w for t in texts for w in re.findall(r"\w+", t)}  # noqa: E731
    assert not words(world.forget_texts) & benign and not words(world.retain_texts) & hazard
    assert words(world.ood_forget_texts) & hazard and not words(world.ood_forget_texts) & benign
    train_sentences = {s.strip() for t in world.forget_texts for s in t.split(" .")}
    assert not any(part.strip() in train_sentences for t in world.ood_forget_texts for part in t.split(";"))
    assert any("Answer:" in t for t in world.forget_texts)  # quiz exercises with training question templates


def test_tokenizer_round_trip_lengths_and_no_unknowns(world, tmp_path):
    from transformers import AutoTokenizer

    tok = world.tokenizer
    assert len(tok) < 400 and tok.bos_token_id is not None and tok.pad_token_id is not None
    prompts = [build_mcq_prompt(m) for m in world.forget_mcq + world.retain_mcq]
    for ids in tok(list(world.forget_texts + world.retain_texts + world.ood_forget_texts) + prompts)["input_ids"]:
        assert len(ids) < MAX_LENGTH and tok.unk_token_id not in ids and ids[0] == tok.bos_token_id
    loaded = AutoTokenizer.from_pretrained(str(world.save_tokenizer(tmp_path / "tok")))
    for text in (world.forget_texts[0], prompts[0]):
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.decode(tok(world.retain_texts[0])["input_ids"], skip_special_tokens=True) == world.retain_texts[0]
    assert [loaded.convert_tokens_to_ids(c) for c in "ABCD"] == [tok.convert_tokens_to_ids(c) for c in "ABCD"]
    assert tok.unk_token_id not in [tok.convert_tokens_to_ids(c) for c in "ABCD"]
