"""The red-team harness end to end on a tiny Llama: two adversary groups, two seeds, two models of one shape."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtar.attacks import Adversary, LoraSpec, get_suite, model_attack_problem, unroll
from jaxtar.eval import (
    EvalSet,
    JudgeTask,
    RedTeamData,
    RedTeamResults,
    adapt_suite,
    attack_batches,
    evaluate,
    judge_generations,
    load_suite,
    name_adversaries,
    red_team,
    run_attack,
    write_report,
)
from jaxtar.eval import redteam as redteam_module
from jaxtar.objectives.lm import batch_cross_entropy
from jaxtar.toy import quiz_text

FULL = Adversary("adamw", lr=5e-3, steps=100, batch_size=4, name="full-adamw")
LORA = Adversary("adamw", lr=1e-2, steps=12, batch_size=4, data="retain_to_forget", name="lora-r2f",
                 lora=LoraSpec(rank=4, alpha=8.0, dropout=0.1, targets=("q_proj", "v_proj")))  # fmt: skip


def _odd_words(prompts, generations):
    return [float(len(g.split()) % 2) for g in generations]


JUDGE = JudgeTask(("the pathogen is", "the city of", "what is the main toxin of"), _odd_words, max_new_tokens=4,
                  batch_size=3)  # fmt: skip


@pytest.fixture(scope="module")
def memo_data(world):
    """Eight questions per domain; the attack text is exactly the solved questions, so a strong attack learns them."""
    forget, retain = list(world.forget_mcq[::30][:8]), list(world.retain_mcq[::30][:8])
    ev = EvalSet(forget, retain, forget_probe=world.forget_texts[:6], retain_probe=world.retain_texts[:6])
    texts = {"forget": [quiz_text(i) for i in forget], "retain": [quiz_text(i) for i in retain]}
    return RedTeamData(ev, texts, world.tokenizer, max_length=64, name="memo")


@pytest.fixture(scope="module")
def models(tiny):
    model, params = tiny
    other = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[..., ::-1].copy()), params)  # same shape, no compile
    return {"base": (model, params), "other": (model, other)}


def test_red_team_end_to_end(models, memo_data, tmp_path):
    """One test on purpose: the attacks compile once per process, and xdist would rerun a shared fixture per worker.

    Two models of one shape x {full-parameter AdamW (100 steps, chunks of 5), LoRA retain->forget (12 steps)} x
    seeds {0, 1}: structure, compile reuse, numbers consistent with the loss curves, chunking == the engine's
    unroll, and the report files.
    """
    out = tmp_path / "results"
    res = red_team(models, [FULL, LORA], memo_data, seeds=(0, 1), out_dir=out, chunk_steps=5, judge=JUDGE,
                   progress=False)  # fmt: skip
    _check_structure_and_compile_reuse(res, models, memo_data)
    model, params = models["base"]
    direct = judge_generations(model, params, memo_data.tokenizer, JUDGE.prompts, _odd_words, max_new_tokens=4,
                               batch_size=3)  # fmt: skip
    assert res.before["base"].judge_score == direct.mean
    assert all(0.0 <= r.after.judge_score <= 1.0 for r in res.runs)
    _check_numbers_follow_the_loss_curves(res)
    _check_chunked_attack_equals_engine_unroll(res, models, memo_data)
    _check_report_files_and_overwrite(res, out)


def _check_structure_and_compile_reuse(res, models, memo_data):
    assert [(r.model, r.adversary, r.seed) for r in res.runs] == [
        (m, a, s) for m in ("base", "other") for a in ("full-adamw", "lora-r2f") for s in (0, 1)
    ]
    for r in res.runs:
        assert len(r.losses) == (100 if r.adversary == "full-adamw" else 12) and not r.diverged
        assert r.before == res.before[r.model]
        assert (r.switch_step is not None) == (r.adversary == "lora-r2f")
    model, params = models["base"]
    direct = evaluate(model, params, memo_data.eval_set.prepare(memo_data.tokenizer))
    assert dataclasses.replace(res.before["base"], judge_score=0.0) == dataclasses.replace(direct, judge_score=0.0)
    assert res.chance == 0.25
    # one compiled chunk function per adversary group, shared by both models and all seeds
    runners = [r for k, r in redteam_module._RUNNERS.items() if k[0] == repr(model.config) and k[3] == 5]
    assert len(runners) == 2 and all(r.run._cache_size() == 1 for r in runners)


def _check_numbers_follow_the_loss_curves(res):
    for r in res.runs:
        assert np.mean(r.losses[-3:]) < r.losses[0] - 0.05, r.describe()
    for model in ("base", "other"):
        full = res.runs_of(model, "full-adamw")
        assert all(r.losses[-1] < 0.3 and r.after.forget_acc == 1.0 for r in full)  # learned the answers
        s = res.summary(model)
        per = res.per_adversary(model)
        assert s.worst_forget_after == max(v["forget_after"] for v in per.values()) == 1.0
        assert s.worst_forget_after >= s.mean_forget_after
        assert s.worst_adversary == "full-adamw"
        assert s.mean_forget_after == pytest.approx(np.mean([v["forget_after"] for v in per.values()]))
        assert per["lora-r2f"]["forget_after"] == pytest.approx(
            np.mean([r.after.forget_acc for r in res.runs_of(model, "lora-r2f")])
        )


def _check_chunked_attack_equals_engine_unroll(res, models, memo_data):
    """Chunks of 5 with a masked tail == the engine's one-scan unroll on the same batches and key."""
    model, params = models["base"]
    adv = dataclasses.replace(FULL, steps=12)
    arrays = memo_data.arrays(memo_data.tokenizer)
    weights, losses, _ = run_attack(model, params, adv, arrays, chunk_steps=5)

    def loss(p, batch, lora):
        return batch_cross_entropy(model.apply(p, batch["input_ids"], batch["attention_mask"]).logits, batch)

    ref = unroll(model_attack_problem(adv, loss), params, adv, attack_batches(arrays, adv),
                 key=jax.random.fold_in(jax.random.key(0), adv.seed))  # fmt: skip
    np.testing.assert_allclose(losses, np.asarray(ref.losses), rtol=2e-5, atol=2e-5)
    for a, b in zip(jax.tree.leaves(weights), jax.tree.leaves(ref.trainable)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    # the red-team run drew the same data: its first 12 losses agree
    np.testing.assert_allclose(res.runs_of("base", "full-adamw")[0].losses[:12], losses, rtol=2e-5, atol=2e-5)


def _check_report_files_and_overwrite(res, out):
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["results.json", "results.md", "attack_loss.png", "forget_accuracy.png", ".jaxtar-results.json", ".jaxtar.lock"]
    )
    for png in ("attack_loss.png", "forget_accuracy.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    raw = json.loads((out / "results.json").read_text())
    assert set(raw) == {"chance", "metadata", "capability_guard", "before", "summary", "runs"}
    assert raw["capability_guard"]["max_retain_drop"] == 0.1 and raw["metadata"]["data_sources"] == {}
    assert raw["summary"]["base"]["worst_forget_after"] == 1.0 and len(raw["runs"]) == 8
    loaded = RedTeamResults.load(out)
    assert loaded.runs[0].losses == pytest.approx(res.runs[0].losses)
    assert loaded.summary("other") == res.summary("other")
    table = (out / "results.md").read_text()
    assert "chance level 25.0 %" in table and "| judge before | judge after |" in table
    s = res.summary("base")
    assert f"| **base** | **worst case** (full-adamw) | | | **{100 * s.worst_forget_after:.1f}** |" in table
    lora = res.per_adversary("other")["lora-r2f"]
    row = f"| other | lora-r2f | 2 | {100 * res.before['other'].forget_acc:.1f} | {100 * lora['forget_after']:.1f} |"
    assert row + f" {100 * res.before['other'].retain_acc:.1f} |" in table
    assert row in table
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_report(res, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    write_report(dataclasses.replace(res, metadata={"device": "x"}), out, overwrite=True)
    assert json.loads((out / "results.json").read_text())["metadata"] == {"device": "x"}


def test_bad_input_fails_before_compute(models, memo_data, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        red_team(models, [FULL], memo_data, out_dir=taken, progress=False)
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    with pytest.raises(ValueError, match="unknown adversary suite 'nope'"):
        red_team(models, "nope", memo_data)
    with pytest.raises(ValueError, match=r"needs data role\(s\) \['ood'\]"):
        red_team(models, [dataclasses.replace(FULL, data="ood")], memo_data)
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        red_team({"gone": tmp_path / "missing"}, [FULL], memo_data)


def test_suites_adapt_load_and_name(tmp_path):
    small = adapt_suite(get_suite("redteam-bio"), steps=20, batch_size=4, lr_scale=10.0)
    big = get_suite("redteam-bio")
    assert len(small) == len(big) and all(a.steps == 20 and a.batch_size == 4 for a in small)
    assert all(a.lr == pytest.approx(10 * b.lr) for a, b in zip(small, big))
    qi = [a for a in small if a.name.endswith("qi2024-cosine")][0]
    assert qi.schedule.warmup_steps == 2  # 100 of 1000 steps
    assert {a.switch_step for a in small if a.switches} == {8}  # 200 of 500: the official 40 % retain phase
    path = tmp_path / "suite.json"
    path.write_text(json.dumps([dataclasses.asdict(a) for a in small[:3] + small[-5:]]))
    assert load_suite(path) == small[:3] + small[-5:]
    assert len(load_suite("toy")) == 6
    named = name_adversaries([Adversary("sgd", lr=0.1), Adversary("sgd", lr=0.1, momentum=0.5)], seeds=(0, 1))
    assert [(a.name, a.seed) for a in named] == [
        ("sgd-0.1-forget", 0), ("sgd-0.1-forget", 1), ("sgd-0.1-forget#2", 0), ("sgd-0.1-forget#2", 1)
    ]  # fmt: skip


def test_named_sources_from_local_files(tmp_path, world):
    """The docs/datasets.md data path offline: local copies with the Hub datasets' fields, cyber subjects excluded."""

    def write(name, rows):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    subjects = ("computer_security", "law", "astronomy")

    def mcq(q, a, s=None):
        return {"question": q, "choices": ["w", "x", "y", "z"], "answer": a} | ({"subject": s} if s else {})

    local = dict(
        forget_mcq=write("wmdp", [mcq(f"hazard {i} ?", i % 4) for i in range(6)]),
        retain_mcq=write("mmlu", [mcq(f"{s} {i} ?", i % 4, s) for s in subjects for i in range(4)]),
        shots=write("dev", [mcq(f"{s} dev {i} ?", 0, s) for s in subjects for i in range(2)]),
        forget=write("ctf", [{"text_chunk": f"exploit text {i}"} for i in range(20)]),
        retain=write("pile", [{"txt_chunk": f"benign text {i}", "label": i % 2 == 0} for i in range(40)]),
    )
    data = RedTeamData.from_sources("cyber", local_paths=local, shots=2, max_length=32)
    assert sorted(data.texts) == ["forget", "retain"] and data.pack
    assert len(data.texts["forget"]) == 18 and len(data.eval_set.forget_probe) == 2  # every 10th text held out
    assert all(t.startswith("benign text") for t in data.texts["retain"] + list(data.eval_set.retain_probe))
    assert len(data.texts["retain"]) + len(data.eval_set.retain_probe) == 20  # label False rows only
    prepared = data.eval_set.prepare(world.tokenizer)
    assert set(prepared.retain.subjects) == {"law", "astronomy"} and len(prepared.forget) == 6
    prompt = world.tokenizer.decode(prepared.retain.input_ids[0], skip_special_tokens=True)
    assert prompt.count("Answer") == 3  # two solved examples of the same subject, then the question
    with pytest.raises(ValueError, match="roles"):
        RedTeamData.from_sources("cyber", local_paths={"nope": "x"})
