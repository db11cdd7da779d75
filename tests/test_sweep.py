"""``jaxtar sweep``: a grid expands to stable named variants; bad grid files exit 2 and write nothing; the shipped
toy-smoke sweep runs end to end (its rows recomputed from each job's red team); a sweep killed with SIGKILL and
resumed gives the rows of an uninterrupted one; a folder holding something else is refused untouched; an Optuna
study of two real trials stores the rows' objective values."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from jaxtar.cli import main
from jaxtar.config.sweep import load_sweep, sweep_from_dict
from jaxtar.eval import RedTeamResults, steps_to_recover
from jaxtar.files import strict_json
from jaxtar.sweep import expand_variants, plan_sweep, read_rows
from jaxtar.sweep.grid import value_text

ROOT = Path(__file__).resolve().parents[1]
SMOKE = load_sweep("toy-smoke")
TIMINGS = ("train_seconds", "redteam_seconds")
SMOKE_VARIANTS = ["base", "random-mapping", "published", "two-adversaries"]


def _smoke_file(tmp_path: Path, **changes) -> Path:
    """The shipped toy-smoke grid with top-level keys replaced."""
    raw = yaml.safe_load((ROOT / "jaxtar/configs/sweeps/toy-smoke.yaml").read_text())
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({**raw, **changes}))
    return path


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def _without_timings(rows: list[dict]) -> list[dict]:
    return sorted(
        ({k: v for k, v in r.items() if k not in TIMINGS} for r in rows), key=lambda r: (r["variant"], r["seed"])
    )


# ------------------------------------------------------------------------------------------------ the grid
def test_grid_expands_to_stable_named_variants_and_jobs():
    grid = sweep_from_dict({
        "defence": "tar", "start_from": "random-mapping", "seeds": [0, 3],
        "overrides": {"tar.outer_steps": 30},
        "variants": {"published": {}, "exact": {"tar.estimator": "exact"}},
        "grid": {"tar.inner_steps": [8, 32], "tar.adversaries_per_step": [1, 4]},
    }, "g")  # fmt: skip
    names = [v.name for v in expand_variants(grid)]
    points = [f"inner_steps={k},adversaries_per_step={a}" for k in (8, 32) for a in (1, 4)]
    assert names == ["base", "random-mapping", *(f"{v},{p}" for v in ("published", "exact") for p in points)]
    assert names[2] == "published,inner_steps=8,adversaries_per_step=1"
    assert [v.name for v in expand_variants(grid)] == names  # stable

    plan = plan_sweep(grid, "/sweeps/g")
    assert len(plan.jobs) == 2 * 10  # seeds x (base + start + 2 explicit x 4 grid points)
    assert [j.key for j in plan.jobs[:3]] == ["base/seed-0", "random-mapping/seed-0", f"{names[2]}/seed-0"]
    assert [j.key for j in plan.jobs[10:12]] == ["base/seed-3", "random-mapping/seed-3"]
    job = next(j for j in plan.jobs if j.key == "exact,inner_steps=32,adversaries_per_step=4/seed-3")
    config = job.config()
    assert (config.tar.estimator, config.tar.inner_steps, config.tar.adversaries_per_step) == ("exact", 32, 4)
    assert config.tar.outer_steps == 30 and config.run.seed == 3 and config.run.resume
    assert config.model.path == "/sweeps/g/runs/random-mapping/seed-3/defence/model"  # the shared start of seed 3
    assert config.run.output_dir == f"/sweeps/g/runs/{job.variant}/seed-3/defence"
    assert job.needs == ("base/seed-3", "random-mapping/seed-3")
    assert dict(job.variant_overrides) == {"tar.estimator": "exact", "tar.inner_steps": 32,
                                           "tar.adversaries_per_step": 4}  # fmt: skip
    start = next(j for j in plan.jobs if j.key == "random-mapping/seed-0")
    assert start.method == "random-mapping" and start.config().model.path == "toy" and start.needs == ("base/seed-0",)

    only_grid = sweep_from_dict({"defence": "random-mapping", "grid": {"random_mapping.lr": [1e-3, 3e-4],
                                                                      "data.max_length": [32]}}, "g")  # fmt: skip
    assert [v.name for v in expand_variants(only_grid)] == ["base", "lr=0.001,max_length=32", "lr=0.0003,max_length=32"]
    both = sweep_from_dict({"defence": "random-mapping", "grid": {"random_mapping.lr": [1e-3], "baseline.lr": [1e-3]}},
                           "g")  # fmt: skip
    assert [v.name for v in expand_variants(both)][1] == "random_mapping.lr=0.001,baseline.lr=0.001"
    assert [value_text(v) for v in (True, None, [1e-3, 3e-3], "a b")] == ["true", "null", "0.001+0.003", "a-b"]


def test_shipped_grids_plan():
    smoke = plan_sweep(SMOKE, "x")
    assert [v.name for v in smoke.variants] == SMOKE_VARIANTS and smoke.attack_lengths == (8,)
    study = plan_sweep(load_sweep("toy-durability"), "x")
    assert len(study.config.seeds) == 3 and study.variants[0].name == "base"
    assert {"exact", "remat"} <= {v.name for v in study.variants}


BAD_GRIDS = {
    "unknown key": ({"seed": [0]}, "unknown key 'seed'; did you mean 'seeds'?"),
    "unknown override field": ({"variants": {"x": {"tar.inner_step": 8}}},
                               "variant 'x': unknown field 'tar.inner_step'; did you mean 'tar.inner_steps'?"),
    "unknown red-team field": ({"redteam": {"eval_evry": 4}}, "did you mean 'redteam.eval_every'?"),
    "invalid value": ({"variants": {"x": {"tar.estimator": "magic"}}}, "TarConfig.estimator must be one of"),
    "empty grid": ({"variants": {}, "grid": {"tar.inner_steps": []}}, "grid.tar.inner_steps must be a non-empty list"),
    "no variants": ({"variants": {}}, "the sweep is empty"),
    "reserved name": ({"variants": {"base": {}}}, "variant name(s) ['base'] are taken"),
    "same generated name": ({"variants": {}, "grid": {"tar.lr": [1e-3, 0.001]}}, "two variants are named 'lr=0.001'"),
    "repeated seed": ({"seeds": [0, 0]}, "seeds must be distinct"),
    "negative seed": ({"seeds": [-1]}, "seeds must be distinct integers in [0, 4294967295]"),
    "owned field": ({"overrides": {"run.seed": 3}}, "run.seed is set by the sweep"),
    "shared start varied": ({"variants": {"x": {"random_mapping.steps": 3}}}, "the start run is shared"),
    "unknown suite": ({"redteam": {"suite": "toy-longg", "eval_every": 4}}, "unknown adversary suite 'toy-longg'"),
    "optuna and a list": ({"optuna": {"trials": 2, "objective": "retain_cost", "direction": "minimize",
                                      "space": {"tar.lr": {"low": 1e-4, "high": 1e-3}}}},
                          "give either optuna (a study) or variants / grid"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_GRIDS))
def test_bad_grid_files_exit_2_and_write_nothing(case, tmp_path, capsys):
    changes, message = BAD_GRIDS[case]
    out = tmp_path / "out"
    assert main(["sweep", str(_smoke_file(tmp_path, **changes)), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err  # one line naming the problem
    assert "grid.yaml" in err and not out.exists()


def test_duplicate_variant_names_in_the_file_are_refused(tmp_path, capsys):
    text = (ROOT / "jaxtar/configs/sweeps/toy-smoke.yaml").read_text()
    grid = tmp_path / "dup.yaml"
    grid.write_text(text.replace("  two-adversaries:", "  published:"))
    assert main(["sweep", str(grid), "--output", str(tmp_path / "out")]) == 2
    assert "duplicate key 'published' in variants" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_optuna_section_without_optuna_installed(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    study = {"trials": 2, "objective": "worst_forget_after_8", "direction": "minimize",
             "space": {"tar.lr": {"low": 1e-4, "high": 1e-2, "log": True}}}  # fmt: skip
    out = tmp_path / "out"
    assert main(["sweep", str(_smoke_file(tmp_path, variants={}, optuna=study)), "--output", str(out)]) == 2
    assert "optuna is not installed: pip install optuna" in capsys.readouterr().err and not out.exists()


def test_optuna_space_and_objective_are_checked(tmp_path, capsys):
    pytest.importorskip("optuna", reason="the Optuna checks need optuna (pip install optuna)")
    study = {"trials": 2, "objective": "worst_forget_after_40", "direction": "minimize",
             "space": {"tar.lr": {"low": 1e-4, "high": 1e-2}}}  # fmt: skip
    out = tmp_path / "out"
    assert main(["sweep", str(_smoke_file(tmp_path, variants={}, optuna=study)), "--output", str(out)]) == 2
    assert "'worst_forget_after_40' is not a numeric results column" in capsys.readouterr().err
    study.update(objective="retain_cost", space={"tar.inner_steps": {"low": 0, "high": 8}})
    assert main(["sweep", str(_smoke_file(tmp_path, variants={}, optuna=study)), "--output", str(out)]) == 2
    assert "optuna.space.tar.inner_steps = 0: TarConfig.inner_steps must be > 0, got 0" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ real sweeps
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One uninterrupted toy-smoke sweep."""
    out = tmp_path_factory.mktemp("sweep") / "smoke"
    assert main(["sweep", "toy-smoke", "--output", str(out), "--no-progress"]) == 0
    return out


def test_smoke_sweep_writes_rows_table_and_plots(smoke):
    for name in ("sweep.json", "results.jsonl", "results.md", "results.json"):
        assert (smoke / name).is_file() and (smoke / name).stat().st_size > 100, name
    for name in ("recovery.png", "steps_to_recover.png"):
        assert (smoke / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (smoke / name).stat().st_size > 5000, name
    rows = read_rows(smoke)
    assert [(r["variant"], r["seed"]) for r in rows] == [(v, 0) for v in SMOKE_VARIANTS]
    for row in rows:
        numbers = [row[k] for k in ("retain_cost", "forget_before", "retain_before", "worst_forget_auc",
                                    "worst_forget_after_8", *TIMINGS)]  # fmt: skip
        assert all(isinstance(x, float | int) and math.isfinite(x) for x in numbers), row
        assert all(0 <= row[k] <= 100 for k in ("forget_before", "retain_before", "worst_forget_after_8")), row
        assert row["attack_budget"] == 8 and row["diverged_runs"] == 0
        assert row["redteam_seconds"] > 0 and (row["train_seconds"] > 0) == (row["variant"] != "base")
    base = rows[0]
    assert base["retain_cost"] == 0 and base["worst_steps_to_recover"] == 0  # the reference recovers at step 0
    assert base["forget_before"] == 100.0  # the shipped toy base model knows every forget question
    assert rows[2]["overrides"] == {} and rows[3]["overrides"] == {"tar.adversaries_per_step": 2}

    # every number recomputed from the job's own red-team results (the base model's merged in as the reference)
    for row in rows:
        results = RedTeamResults.load(smoke / "runs" / row["variant"] / "seed-0" / "redteam")
        assert results.models == (["base"] if row["variant"] == "base" else ["base", row["variant"]])
        before, ref = results.before[row["variant"]], results.before["base"]
        base_job = RedTeamResults.load(smoke / "runs/base/seed-0/redteam").before["base"]
        assert strict_json(ref.to_dict()) == strict_json(base_job.to_dict())  # the same reference scores
        assert row["retain_cost"] == pytest.approx(100 * (ref.retain_acc - before.retain_acc), abs=1e-9)
        assert row["forget_before"] == pytest.approx(100 * before.forget_acc)
        runs = results.runs_of(row["variant"])
        assert sorted(r.adversary for r in runs) == ["toy-adamw-1e-3", "toy-r2f-adamw-1e-3"]
        assert row["worst_forget_after_8"] == pytest.approx(100 * max(r.after.forget_acc for r in runs))
        threshold = ref.forget_acc - 0.05
        recovered = [steps_to_recover(r.curve.steps, r.curve.forget_acc, threshold) for r in runs]
        assert all(r.curve.steps == (0, 4, 8) for r in runs)
        assert row["worst_steps_to_recover"] == min((s for s in recovered if s is not None), default=None)

    # the TAR variants start from the shared random-mapping run of their seed
    start = smoke / "runs/random-mapping/seed-0/defence/model"
    for variant in ("published", "two-adversaries"):
        config = yaml.safe_load((smoke / "runs" / variant / "seed-0/defence/config.yaml").read_text())
        assert config["model"]["path"] == str(start) and config["tar"]["outer_steps"] == 2
        assert (smoke / "runs" / variant / "seed-0/defence/model/model.safetensors").is_file()
    assert rows[1]["retain_cost"] > 0  # the crude start run costs retain accuracy (toy-smoke: 10 steps at lr 1e-2)

    table = (smoke / "results.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| variant")]
    assert [line.split(" | ")[0][2:] for line in lines][-1] == "base"  # sorted by steps to recover: base is last
    aggregate = json.loads((smoke / "results.json").read_text())
    stats = {v["variant"]: v["stats"] for v in aggregate["variants"]}
    for row in rows:
        assert stats[row["variant"]]["retain_cost"]["mean"] == pytest.approx(row["retain_cost"])
        assert stats[row["variant"]]["worst_forget_after_8"]["n"] == 1


def test_killed_sweep_resumes_to_the_uninterrupted_rows(smoke, tmp_path, capsys):
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = "import sys; from jaxtar.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "sweep", "toy-smoke", "--output", str(out), "--no-progress"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.time() + 300
    while not read_rows(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    still_running = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    stderr = proc.communicate()[1].decode()
    assert still_running, stderr[-3000:]
    first = read_rows(out)
    assert 1 <= len(first) < len(SMOKE_VARIANTS)
    # what a writer killed mid-report leaves (a temporary file), and a file of the user's beside the job's folders
    unfinished = out / "runs" / SMOKE_VARIANTS[len(first)] / "seed-0"
    (unfinished / "redteam").mkdir(parents=True, exist_ok=True)
    (unfinished / "redteam" / ".results.tmp-0123abcd.json").write_text('{"before": ')
    (unfinished / "notes.txt").write_text("mine")

    assert main(["sweep", "toy-smoke", "--output", str(out), "--resume", "--no-progress"]) == 0
    rows = read_rows(out)
    assert rows[: len(first)] == first  # complete jobs were skipped, their rows (timings too) kept
    assert not (unfinished / "redteam" / ".results.tmp-0123abcd.json").exists()  # the sweep's own leftover: gone
    assert (unfinished / "notes.txt").read_text() == "mine"  # anything else: untouched
    assert sorted(p.name for p in (unfinished / "redteam").iterdir() if p.name != ".jaxtar.lock") == [
        ".jaxtar-results.json", "results.json", "results.md"]  # fmt: skip
    assert _without_timings(rows) == _without_timings(read_rows(smoke))
    assert (out / "recovery.png").is_file() and "| published |" in (out / "results.md").read_text()


def test_folders_holding_something_else_are_refused_untouched(smoke, tmp_path, capsys):
    before = _snapshot(smoke)
    other = _smoke_file(tmp_path, seeds=[0, 1])
    assert main(["sweep", str(other), "--output", str(smoke), "--resume"]) == 2
    assert "holds a sweep of a different grid (differs in: seeds)" in capsys.readouterr().err
    assert main(["sweep", "toy-smoke", "--output", str(smoke)]) == 2  # no --resume
    assert "is not empty; pass --resume" in capsys.readouterr().err
    assert _snapshot(smoke) == before

    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["sweep", "toy-smoke", "--output", str(foreign), "--resume"]) == 2
    assert "holds no sweep.json" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_optuna_study_of_two_real_trials(tmp_path):
    optuna = pytest.importorskip("optuna", reason="the Optuna sweep needs optuna (pip install optuna)")
    study = {"trials": 2, "objective": "worst_forget_after_8", "direction": "minimize", "seed": 0,
             "space": {"tar.lr": {"low": 1e-4, "high": 1e-2, "log": True}}}  # fmt: skip
    grid = _smoke_file(tmp_path, variants={}, start_from=None, optuna=study)
    out = tmp_path / "study"
    assert main(["sweep", str(grid), "--output", str(out), "--jobs", "2", "--no-progress"]) == 0  # 2 worker processes

    stored = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'optuna.db'}")
    trials = stored.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(stored.trials) == len(trials) == 2
    rows = {r["variant"]: r for r in read_rows(out)}
    assert sorted(rows) == ["base", "trial-0", "trial-1"]
    for trial in trials:
        row = rows[f"trial-{trial.number}"]
        assert trial.value == row["worst_forget_after_8"] and math.isfinite(trial.value)
        assert row["overrides"] == trial.params and 1e-4 <= trial.params["tar.lr"] <= 1e-2
        config = yaml.safe_load((out / "runs" / f"trial-{trial.number}/seed-0/defence/config.yaml").read_text())
        assert config["tar"]["lr"] == trial.params["tar.lr"] and config["model"]["path"] == "toy"
    assert trials[0].params != trials[1].params

    # resumed, a finished study asks for nothing more and keeps its rows
    assert main(["sweep", str(grid), "--output", str(out), "--resume", "--no-progress"]) == 0
    assert len(optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'optuna.db'}").trials) == 2
    assert {r["variant"]: r for r in read_rows(out)} == rows
