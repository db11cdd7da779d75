"""Multiple-choice scoring, loss probes and the judge hook against direct numpy computations."""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
import pytest

from jaxtar.data.batching import tokenize_texts
from jaxtar.data.mcq import MCQItem, build_mcq_prompt
from jaxtar.eval import (
    EvalSet,
    binomial_stderr,
    evaluate,
    excluded_subjects,
    judge_generations,
    letter_token_ids,
    mcq_prompts,
    prepare_mcq,
    prepare_probe,
    probe_loss,
    refusal_keyword_judge,
    score_mcq,
)
from jaxtar.models.generate import generate


class _FakeTokenizer:
    """Maps whole strings to id lists (enough for `letter_token_ids`)."""

    unk_token_id = 0

    def __init__(self, table):
        self.table = table

    def encode(self, text, add_special_tokens=False):
        return self.table.get(text, [0, 0])


def test_letter_token_ids(world):
    tok = world.tokenizer
    assert letter_token_ids(tok) == tuple(tok.convert_tokens_to_ids(list("ABCD")))
    spaced = {f" {c}": [10 + i] for i, c in enumerate("ABCD")} | {c: [20 + i] for i, c in enumerate("ABCD")}
    assert letter_token_ids(_FakeTokenizer(spaced)) == (10, 11, 12, 13)  # the spaced form wins
    split = {f" {c}": [5, 20 + i] for i, c in enumerate("ABCD")} | {c: [20 + i] for i, c in enumerate("ABCD")}
    assert letter_token_ids(_FakeTokenizer(split)) == (20, 21, 22, 23)  # " A" is two tokens: fall back to "A"
    unk = {f" {c}": [0] for c in "ABCD"} | {c: [30 + i] for i, c in enumerate("ABCD")}
    assert letter_token_ids(_FakeTokenizer(unk)) == (30, 31, 32, 33)
    with pytest.raises(ValueError, match="single token"):
        letter_token_ids(_FakeTokenizer({}))
    assert len(letter_token_ids(_FakeTokenizer(spaced), 3)) == 3


def test_shots_and_subject_exclusion():
    bio = [MCQItem(f"b{i}?", ("w", "x", "y", "z"), i % 4, "virology") for i in range(4)]
    law = [MCQItem(f"l{i}?", ("w", "x", "y", "z"), i % 4, "law") for i in range(3)]
    prompts = mcq_prompts([law[0]], shots=2, shot_pool=bio + law)
    assert prompts[0] == build_mcq_prompt(law[0], [law[1], law[2]])  # same subject, itself excluded
    with pytest.raises(ValueError, match="3-shot prompts need 3 examples of subject 'law'"):
        mcq_prompts([law[0]], shots=3, shot_pool=law)
    assert "virology" in excluded_subjects("bio") and excluded_subjects("cyber") == ("computer_security",)
    with pytest.raises(ValueError, match="unknown forget domain"):
        excluded_subjects("chem")

    class Tok:
        unk_token_id = None

        def encode(self, text, add_special_tokens=False):
            return [ord(text[-1])]

        def __call__(self, texts):
            return {"input_ids": [[ord(c) % 50 for c in t] for t in texts]}

    batch = prepare_mcq(Tok(), bio + law, exclude_subjects="bio")
    assert batch.subjects == ("law",) * 3 and batch.answers.tolist() == [0, 1, 2]
    assert batch.input_ids.shape[1] % 16 == 0 and batch.chance == 0.25


def _same_length(tok, items, n):
    """``n`` items whose prompts have one token length (one unpadded reference batch, one compile)."""
    lengths = [len(tok(build_mcq_prompt(i))["input_ids"]) for i in items]
    common = max(set(lengths), key=lengths.count)
    return [i for i, n_tok in zip(items, lengths) if n_tok == common][:n]


def test_scores_equal_numpy_from_logits(tiny, world):
    """Left-padded, batched, jitted scoring == an unpadded forward pass of the same prompts, argmax in numpy."""
    model, params = tiny
    tok = world.tokenizer
    items = _same_length(tok, list(world.forget_mcq[:40]) + list(world.retain_mcq[:40]), 6)
    batch = prepare_mcq(tok, items)  # the eval set's length bucket and batch size: no extra compile
    assert batch.attention_mask[:, 0].sum() == 0  # every row is left-padded
    res = score_mcq(model, params, batch)  # 6 rows padded to a batch of 32
    ids = np.asarray(tok([build_mcq_prompt(i) for i in items])["input_ids"])
    logits = np.asarray(jax.jit(model.apply)(params, ids).logits)[:, -1]
    expected = logits[:, np.asarray(letter_token_ids(tok))]
    np.testing.assert_allclose(res.letter_logits, expected, rtol=1e-4, atol=1e-4)
    predictions = expected.argmax(1)
    np.testing.assert_array_equal(res.predictions, predictions)
    acc = np.mean(predictions == np.asarray([i.answer for i in items]))
    assert res.accuracy == pytest.approx(acc) and res.n == 6
    assert res.stderr == pytest.approx(math.sqrt(acc * (1 - acc) / 6))
    # three-choice questions never predict "D": put row 0's favourite letter last, allow three choices
    letters = np.asarray(batch.letter_ids)
    top = int(np.argmax(expected[0]))
    order = [i for i in range(4) if i != top] + [top]
    three = dataclasses.replace(batch, letter_ids=tuple(letters[order].tolist()), num_choices=np.full(6, 3, np.int32))
    masked = score_mcq(model, params, three).predictions
    np.testing.assert_array_equal(masked, expected[:, order[:3]].argmax(1))
    assert masked[0] != 3


def test_random_model_scores_near_chance(tiny, world):
    model, params = tiny
    ev = EvalSet(world.forget_mcq, world.retain_mcq)
    scores = evaluate(model, params, ev.prepare(world.tokenizer))
    assert scores.forget_n == len(world.forget_mcq) and scores.retain_n == len(world.retain_mcq)
    for acc, se, n in ((scores.forget_acc, scores.forget_se, scores.forget_n),
                       (scores.retain_acc, scores.retain_se, scores.retain_n)):  # fmt: skip
        assert abs(acc - 0.25) < 0.1
        assert se == pytest.approx(binomial_stderr(acc, n))
    assert ev.chance == 0.25 and math.isnan(scores.forget_loss)  # no probe text given
    assert binomial_stderr(0.5, 100) == pytest.approx(0.05)


def test_probe_loss_equals_numpy(tiny, world):
    model, params = tiny
    texts = list(world.forget_texts[:3]) + ["the"]
    probe = prepare_probe(world.tokenizer, texts, 64)
    got = probe_loss(model, params, probe, batch_size=32)
    logits = np.asarray(jax.jit(model.apply)(params, probe["input_ids"]).logits, np.float64)  # right padding: causal
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    nll, count = 0.0, 0
    for row, text in enumerate(texts):
        ids = np.asarray(world.tokenizer(text)["input_ids"])
        nll -= logp[row, np.arange(len(ids) - 1), ids[1:]].sum()
        count += len(ids) - 1
    assert got == pytest.approx(nll / count, rel=1e-5)


def test_judge_hook_sees_greedy_generations(tiny, world):
    model, params = tiny
    tok = world.tokenizer
    prompts = ["the pathogen is", "the city of", "what is the main toxin of"]
    seen = {}

    def judge(p, g):
        seen.update(prompts=list(p), generations=list(g))
        return [float(len(x.split()) % 2) for x in g]

    res = judge_generations(model, params, tok, prompts, judge, max_new_tokens=4, batch_size=3)
    assert seen["prompts"] == prompts and list(res.generations) == seen["generations"]
    rows = tokenize_texts(tok, prompts, 16, padding_side="left")  # the judge's own padding: no second compile
    out = np.asarray(generate(model, params, rows["input_ids"], rows["attention_mask"], max_new_tokens=4,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))  # fmt: skip
    expected = [tok.decode(row[16:], skip_special_tokens=True).strip() for row in out]
    assert list(res.generations) == expected
    scores = np.asarray([len(x.split()) % 2 for x in res.generations], float)
    assert res.mean == pytest.approx(scores.mean()) and res.scores == tuple(scores)
    assert refusal_keyword_judge(["q", "q"], ["Sorry, no.", "Sure: step one"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="returned 1 scores for 3 prompts"):
        judge_generations(model, params, tok, prompts, lambda p, g: [1.0], max_new_tokens=4, batch_size=2)
