"""The main job, ``jaxtar demo``: a real quick run of the whole pipeline (base -> random mapping -> TAR -> red team),
its outputs and numbers, the honest verdict, and the refusal to touch an existing folder; its numbers against the
committed snapshot docs/results/demo-quick.json (a drift guard on the code)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import stat
from pathlib import Path

import numpy as np
import pytest

from jaxtar.cli import main
from jaxtar.demo import (
    FULL,
    LONG_ATTACK_STEPS,
    MODELS,
    QUICK,
    QUICK_WARNING,
    RETAIN_LOSS_NOTE,
    TORCH_NOTE,
    check_demo_dir,
    default_output_dir,
    demo_table,
    key_numbers,
    longer_attack_command,
    recovery_numbers,
    run_demo,
    verdict,
)
from jaxtar.demo import _suite as demo_suite
from jaxtar.eval import RecoveryCurve, RedTeamResults, Scores
from jaxtar.eval.durability import DEFAULT_RECOVER_MARGIN, attack_chunk, eval_points
from jaxtar.eval.report import AttackRun
from jaxtar.files import default_file_mode
from jaxtar.toy import shipped_toy_model_dir

SNAPSHOT = Path(__file__).resolve().parents[1] / "docs" / "results" / "demo-quick.json"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick demo with progress on, its stderr captured as a log file would be (not a terminal)."""
    out = tmp_path_factory.mktemp("demo") / "run"
    lines: list[str] = []
    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        result = run_demo(out, quick=True, progress=True, log=lines.append)
    return result, "\n".join(lines), stderr.getvalue() + stdout.getvalue()


def test_quick_demo_writes_results_table_and_plots(quick):
    result, printed, _ = quick
    out = result.out_dir
    for name in ("summary.md", "demo.json", "redteam/results.json", "redteam/results.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 100, name
    for name in ("attack_loss.png", "forget_accuracy.png", "recovery.png"):
        data = (out / "redteam" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    for run in ("random-mapping", "tar"):
        assert (out / run / "model" / "model.safetensors").is_file() and (out / run / "result.json").is_file()
    for stage in ("[1/4] base", "[2/4] random mapping", "[3/4] TAR", "[4/4] red team", "Chance level: 25.0 %",
                  "QUICK RUN", "What this does NOT show", longer_attack_command(out)):  # fmt: skip
        assert stage in printed, stage

    saved = RedTeamResults.load(out / "redteam")
    assert saved.models == list(MODELS) and saved.chance == 0.25
    assert saved.adversaries == list(QUICK.adversaries)
    assert len(saved.runs) == len(MODELS) * len(QUICK.adversaries) * len(QUICK.seeds)
    for run in saved.runs:
        assert len(run.losses) == QUICK.attack_steps and all(math.isfinite(x) and 0 < x < 20 for x in run.losses)
        for s in (run.before, run.after):
            assert 0.0 <= s.forget_acc <= 1.0 and 0.0 <= s.retain_acc <= 1.0
            assert s.forget_n == s.retain_n == QUICK.mcq_limit
            assert math.isfinite(s.forget_loss) and s.forget_loss > 0

    # the shipped base model's known score: 100 % forget (and 97.5 % retain on all 240 questions)
    shipped = json.loads((shipped_toy_model_dir(1, 0) / "toy_world.json").read_text())
    assert saved.before["base"].forget_acc == shipped["forget_mcq_accuracy"] == 1.0
    assert saved.before["base"].retain_acc >= 0.9

    # the three models are different weights (each defence really trained)
    assert len({saved.before[m].forget_loss for m in MODELS}) == 3

    # the printed table is the saved one: each model's worst case, and demo.json records the run
    for m in MODELS:
        s = saved.summary(m)
        assert f"| {m} | {100 * s.before.forget_acc:.1f} ± " in result.summary
        assert f"**{100 * s.worst_forget_after:.1f}** ({s.worst_adversary})" in result.summary
    assert demo_table(saved) in (out / "summary.md").read_text()
    meta = json.loads((out / "demo.json").read_text())
    assert meta["quick"] is True and meta["seeds"] == [0] and meta["verdict"] == verdict(saved)
    assert set(meta["stage_seconds"]) == {"base", "random_mapping", "tar", "red_team"}
    assert meta["seconds"] > 0 and len(meta["end"]["load_average"]) == 3


def _steps_to_recover(steps: list[int], forget: list[float], threshold: float) -> int | None:
    """The rule, restated: the first scored step whose forget accuracy is at or above the threshold."""
    return next((s for s, f in zip(steps, forget) if f >= threshold - 1e-9), None)


def test_quick_demo_records_the_recovery_curve_of_its_longest_attack(quick):
    result, printed, _ = quick
    out = result.out_dir
    meta = json.loads((out / "demo.json").read_text())
    saved = RedTeamResults.load(out / "redteam")
    rec, grid = meta["recovery"], list(range(0, QUICK.attack_steps + 1, QUICK.eval_every))
    assert grid == [0, 2, 4] and meta["eval_every"] == rec["eval_every"] == QUICK.eval_every
    # all quick attacks are 4 steps: the first of them is the one reported
    assert rec["adversary"] == QUICK.adversaries[0] and rec["steps"] == grid and rec["attack_steps"] == 4
    assert all(r.curve is not None and list(r.curve.steps) == grid for r in saved.runs)  # every attack scored
    threshold = saved.before["base"].forget_acc - DEFAULT_RECOVER_MARGIN  # the base's level minus the margin
    assert rec["reference_model"] == "base" and rec["recover_threshold"] == pytest.approx(threshold, abs=1e-4)
    assert set(rec["models"]) == set(MODELS)
    for m in MODELS:
        c = rec["models"][m]
        assert c["steps"] == grid and len(c["forget_acc"]) == len(c["retain_acc"]) == len(grid)
        assert all(0.0 <= x <= 1.0 for x in c["forget_acc"] + c["retain_acc"])
        # the curve starts at the model's before-score and ends at its after-score
        assert c["forget_acc"][0] == pytest.approx(saved.before[m].forget_acc, abs=1e-4)
        after = meta["numbers"][m]["per_adversary"][rec["adversary"]]["forget_after"]
        assert c["forget_acc"][-1] == pytest.approx(after, abs=1e-4)
        assert c["steps_to_recover"] == _steps_to_recover(c["steps"], c["forget_acc"], threshold)
        assert 0.0 <= c["forget_auc"] <= 1.0
        shown = "not within 4" if c["steps_to_recover"] is None else str(c["steps_to_recover"])
        row = f"| {m} | " + " | ".join(f"{100 * x:.1f}" for x in c["forget_acc"]) + f" | **{shown}** |"
        assert row in result.summary and row in (out / "summary.md").read_text()
    assert rec["models"]["base"]["steps_to_recover"] == 0  # the reference is at its own level before the attack
    assert f"Forget accuracy during {rec['adversary']} (4 steps), scored every 2 steps" in printed
    assert f"{out / 'redteam' / 'recovery.png'} (forget accuracy during the attacks" in printed
    assert "## Durability" in (out / "redteam" / "results.md").read_text()


def test_the_full_demo_scores_its_160_step_attack_every_20_steps():
    long = [a for a in demo_suite(FULL) if a.steps == LONG_ATTACK_STEPS]
    assert [a.name for a in long] == [f"toy-adamw-1e-3-{LONG_ATTACK_STEPS}steps"] and FULL.eval_every == 20
    assert eval_points(LONG_ATTACK_STEPS, FULL.eval_every) == list(range(0, 161, 20))
    assert attack_chunk(50, LONG_ATTACK_STEPS, FULL.eval_every) == 20  # red_team's default chunks line up


def _curve(forget: list[float], every: int = 20) -> RecoveryCurve:
    n = len(forget)
    return RecoveryCurve(tuple(range(0, every * n, every)), tuple(forget), (0.9,) * n, (1.0,) * n, (1.0,) * n)


def test_the_demo_table_reports_steps_to_recover_of_the_long_attack():
    def scores(acc: float) -> Scores:
        return Scores(acc, 0.0, 240, 0.95, 0.0, 240, 1.0, 1.0)

    tar = [0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.93]  # never back to 95 % within 160 steps
    rm = [0.95, 0.9, 0.92, 0.94, 0.96, 1.0, 1.0, 1.0, 1.0]  # at the threshold before the attack
    curves = {"base": [1.0] * 9, "random-mapping": rm, "tar": tar}
    before = {m: scores(c[0]) for m, c in curves.items()}
    runs = tuple(
        run
        for m, c in curves.items()
        for run in (
            AttackRun(m, "short", 0, {"steps": 40}, before[m], scores(c[2]), (1.0,), curve=_curve(c[:3])),
            AttackRun(m, "long-160", 0, {"steps": 160}, before[m], scores(c[-1]), (1.0,), curve=_curve(c)),
        )
    )
    results = RedTeamResults(before, runs, 0.25, metadata={"eval_every": 20}, reference_model="base")
    table = demo_table(results)
    assert "Forget accuracy during long-160 (160 steps), scored every 20 steps" in table
    assert "| model | step 0 | 20 | 40 | 60 | 80 | 100 | 120 | 140 | 160 | steps to recover |" in table
    assert "| tar | 25.0 | 30.0 | 40.0 | 50.0 | 60.0 | 70.0 | 80.0 | 90.0 | 93.0 | **not within 160** |" in table
    assert "| random-mapping | 95.0 | 90.0 | 92.0 | 94.0 | 96.0 | 100.0 | 100.0 | 100.0 | 100.0 | **0** |" in table
    rec = recovery_numbers(results)
    assert rec["adversary"] == "long-160" and rec["steps"] == list(range(0, 161, 20)) and rec["attack_steps"] == 160
    assert {m: c["steps_to_recover"] for m, c in rec["models"].items()} == {"base": 0, "random-mapping": 0, "tar": None}
    assert "Steps to recover during long-160" in "\n".join(key_numbers(results))
    assert "tar not within 160" in "\n".join(key_numbers(results))
    # without curves (a red team without eval_every): no section, no numbers
    plain = RedTeamResults(before, tuple(dataclasses.replace(r, curve=None) for r in runs), 0.25)
    assert "scored every" not in demo_table(plain) and recovery_numbers(plain) is None


def test_an_existing_output_folder_is_refused_and_left_alone(quick, tmp_path, capsys):
    result, _, _ = quick
    before = sorted(p.relative_to(result.out_dir) for p in result.out_dir.rglob("*"))
    summary = (result.out_dir / "summary.md").read_bytes()
    with pytest.raises(FileExistsError, match="already exists and is not empty; the demo never overwrites"):
        run_demo(result.out_dir, quick=True, progress=False, log=lambda s: None)
    assert main(["demo", "--quick", "--output", str(result.out_dir)]) == 2
    assert "jaxtar demo: error:" in capsys.readouterr().err
    assert sorted(p.relative_to(result.out_dir) for p in result.out_dir.rglob("*")) == before
    assert (result.out_dir / "summary.md").read_bytes() == summary

    a_file = tmp_path / "results.txt"
    a_file.write_text("keep me")
    with pytest.raises(FileExistsError):
        check_demo_dir(a_file)
    assert a_file.read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    assert check_demo_dir(tmp_path / "empty") == tmp_path / "empty"  # an empty folder is fine


def test_quick_demo_red_teams_the_papers_baselines_beside_tar(tmp_path, capsys):
    out = tmp_path / "with-baselines"
    assert main(["demo", "--quick", "--no-progress", "--baselines", "max_entropy", "rmu", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (
        "[4/5] the paper's baselines from the base model: max_entropy, rmu" in printed and "[5/5] red team" in printed
    )
    meta = json.loads((out / "demo.json").read_text())
    assert sorted(meta["models"]) == ["base", "max-entropy", "random-mapping", "rmu", "tar"]
    assert meta["baselines"] == ["max_entropy", "rmu"] and meta["stage_seconds"]["baselines"] > 0
    for name in ("max-entropy", "rmu"):
        assert meta["models"][name] == str(out / f"baseline-{name}" / "model")
        assert (out / f"baseline-{name}" / "model" / "model.safetensors").is_file()
        assert f"| {name} |" in (out / "summary.md").read_text()  # a row of the table, measured like TAR's
    results = RedTeamResults.load(out / "redteam")
    assert set(results.models) == set(meta["models"]) and all(math.isfinite(results.summary(m).mean_forget_after)
                                                               for m in results.models)  # fmt: skip
    assert main(["demo", "--quick", "--baselines", "dropout", "--output", str(tmp_path / "bad")]) == 2
    assert "unknown ['dropout']" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_default_output_folder_is_new(tmp_path):
    first = default_output_dir(tmp_path)
    assert first.parent == tmp_path and first.name.startswith("demo-") and not first.exists()
    first.mkdir()
    second = default_output_dir(tmp_path)
    assert second != first and not second.exists()


def _results(forget_after: dict[str, list[float]], n: int = 240) -> RedTeamResults:
    def scores(acc: float) -> Scores:
        return Scores(acc, float(np.sqrt(acc * (1 - acc) / n)), n, 0.95, 0.01, n, 1.0, 1.0)

    before = {m: scores(1.0 if m != "tar" else 0.25) for m in forget_after}
    runs = tuple(
        AttackRun(m, f"adv{i}", 0, {"steps": 40}, before[m], scores(acc), (1.0, 0.5))
        for m, accs in forget_after.items()
        for i, acc in enumerate(accs)
    )
    return RedTeamResults(before, runs, 0.25)


def test_the_verdict_says_when_tar_did_not_resist():
    held = _results({"base": [1.0, 0.99], "random-mapping": [1.0, 0.95], "tar": [0.3, 0.55]})
    assert verdict(held).startswith("TAR lowered the worst-case post-attack forget accuracy from 100.0 % (base)")
    assert "55.0 %" in verdict(held) and "well above chance" in verdict(held)
    near_chance = _results({"base": [1.0], "random-mapping": [1.0], "tar": [0.27]})
    assert "close to chance" in verdict(near_chance)
    broken = _results({"base": [1.0, 0.99], "random-mapping": [1.0, 0.95], "tar": [0.3, 0.97]})
    assert verdict(broken).startswith("TAR did NOT resist this red team")
    assert "| adv1 | 99.0 (95.0) | 95.0 (95.0) | 97.0 (95.0) |" in demo_table(broken)


def test_quick_demo_says_what_a_newcomer_needs_first(quick):
    result, printed, log = quick
    out = result.out_dir
    # the quick-run warning comes first, on screen and in summary.md, before any table
    assert printed.splitlines()[1] == QUICK_WARNING and printed.index(QUICK_WARNING) < printed.index("[1/4]")
    summary = (out / "summary.md").read_text()
    assert summary.startswith(f"# jaxtar demo\n\n{QUICK_WARNING}\n\n| model |")
    assert result.summary.startswith(QUICK_WARNING) and "the numbers below mean nothing" not in summary.split("|")[-1]
    # loading the exports with transformers needs PyTorch: said where the exports are announced
    assert TORCH_NOTE in printed and TORCH_NOTE in summary and "pip install torch" in TORCH_NOTE
    assert f"{out / 'tar' / 'model'} (config.json + model.safetensors" in summary
    # retain loss before / after beside retain accuracy, in the table, summary.md and demo.json
    saved = RedTeamResults.load(out / "redteam")
    meta = json.loads((out / "demo.json").read_text())
    for m in MODELS:
        s, n = saved.summary(m), meta["numbers"][m]
        assert n["retain_loss_before"] > 0
        assert n["retain_loss_before"] == pytest.approx(saved.before[m].retain_loss, abs=1e-4)
        assert n["mean_retain_loss_after"] == pytest.approx(s.mean_retain_loss_after, abs=1e-4)
        assert s.mean_retain_loss_after == pytest.approx(np.mean([r.after.retain_loss for r in saved.runs_of(m)]))
        assert f"| {saved.before[m].retain_loss:.2f} → {s.mean_retain_loss_after:.2f} |" in summary
    assert "retain loss before → after (mean)" in summary and RETAIN_LOSS_NOTE in summary
    assert RedTeamResults.from_dict(meta["results"]).to_dict() == saved.to_dict()
    # progress went to a log, not a terminal: whole lines, no carriage-return bars
    assert "\r" not in log and "\x1b" not in log
    # (an attack run slow enough, on a loaded machine, also logs its progress line: only the phases are counted)
    finished = [line for line in log.splitlines() if " steps (100 %) | " in line and "seed" not in line]
    assert len(finished) == 2 and all(line.startswith(("random_mapping: 2/2", "tar: 2/2")) for line in finished), log
    assert len(log.splitlines()) < 40  # two phase lines, one per attack run, a few notes
    # every file the demo wrote follows the umask (no 0600 safetensors)
    modes = {p.relative_to(out): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    for name in ("summary.md", "demo.json", "tar/model/model.safetensors", "random-mapping/model/model.safetensors",
                 "tar/model/config.json", "redteam/results.json", "redteam/forget_accuracy.png"):  # fmt: skip
        assert modes[Path(name)] == default_file_mode(), name


# The quick demo is deterministic on one machine (two runs and a single-threaded run gave identical demo.json
# numbers); across CPUs / XLA versions float rounding may flip a question: each accuracy here is out of 40
# questions (2.5 points each), so accuracies may move by 2 questions and losses by 5 % before this test fails.
# The snapshot is made at XLA's default optimisation level and the suite compiles at level 0 (conftest.py),
# whose rounding moved the first loss of one attack curve by 3.3 % (every accuracy and every other loss within 2 %).
ACC_TOLERANCE, LOSS_RTOL = 0.05 + 1e-9, 0.05


def test_quick_demo_numbers_match_the_committed_snapshot(quick):
    """A drift guard on the code: the quick demo's numbers against docs/results/demo-quick.json. When a change is
    meant to move them, refresh the snapshot: `jaxtar demo --quick --output /tmp/q && python
    scripts/update_results.py /tmp/q`."""
    result, _, _ = quick
    got = json.loads((result.out_dir / "demo.json").read_text())
    want = json.loads(SNAPSHOT.read_text())
    assert want["quick"] is True and (got["adversaries"], got["seeds"]) == (want["adversaries"], want["seeds"])
    assert got["overrides"] == want["overrides"] and got["mcq_limit"] == want["mcq_limit"]
    drift = []

    def compare(path: str, a, b) -> None:
        if isinstance(b, dict):
            assert set(a) == set(b), path
            for k in b:
                compare(f"{path}.{k}", a[k], b[k])
        elif isinstance(b, str) or b is None:
            if a != b:
                drift.append(f"{path}: {a!r} != {b!r}")
        elif "loss" in path.rsplit(".", 1)[-1]:
            if not math.isclose(a, b, rel_tol=LOSS_RTOL):
                drift.append(f"{path}: {a} vs {b} (rtol {LOSS_RTOL})")
        elif abs(a - b) > ACC_TOLERANCE:
            drift.append(f"{path}: {a} vs {b} (tolerance {ACC_TOLERANCE:.3f})")

    def numbers(meta):  # the worst adversary's name may change on a tie; its number is compared
        return {m: {k: v for k, v in n.items() if k != "worst_adversary"} for m, n in meta["numbers"].items()}

    compare("numbers", numbers(got), numbers(want))
    curves = {(r["model"], r["adversary"]): r["losses"] for r in want["results"]["runs"]}
    for r in got["results"]["runs"]:
        np.testing.assert_allclose(r["losses"], curves[(r["model"], r["adversary"])], rtol=LOSS_RTOL)
    assert not drift, "the quick demo's numbers drifted from docs/results/demo-quick.json:\n" + "\n".join(drift)
