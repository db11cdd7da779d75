"""Issue 24: a red team never deletes files it did not write, locks its folder for the whole run, keeps diverged
attacks out of means and worst cases, and refuses bad suites and inputs with one clean error before writing.

The attack and the scoring are replaced by instant fakes (the real ones are covered by test_redteam / test_cli):
what is tested here is which folders are touched, when, and what the report says.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

import jaxtar.commands.redteam  # noqa: F401 - registers the subcommands
from jaxtar.attacks import Adversary
from jaxtar.cli import main
from jaxtar.errors import ConfigError, RunDirError, RunLockedError
from jaxtar.eval import AttackRun, RedTeamData, RedTeamResults, Scores, load_suite, markdown_table, red_team
from jaxtar.eval import redteam as redteam_module
from jaxtar.eval.report import write_report
from jaxtar.eval.results_dir import MANIFEST, read_manifest
from jaxtar.runlock import RunLock

ADV = Adversary("adamw", lr=1e-2, steps=3, batch_size=2, name="safe-adamw")
SCORES = Scores(0.5, 0.1, 4, 0.75, 0.1, 4, forget_loss=1.0, retain_loss=1.0)


@pytest.fixture
def attacks(monkeypatch):
    """Instant fake attacks and scores; returns the list of attacks run (empty: no compute was spent)."""
    calls: list[str] = []

    def run_attack(model, params, adversary, arrays, **kw):
        calls.append(adversary.name)
        return params, np.linspace(2.0, 1.0, adversary.steps), None

    monkeypatch.setattr(redteam_module, "run_attack", run_attack)
    monkeypatch.setattr(redteam_module, "_scores", lambda *a, **k: SCORES)
    return calls


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("suite") / "suite.json"
    path.write_text(json.dumps([dataclasses.asdict(ADV)]))
    return path


@pytest.fixture(scope="module")
def data():
    return RedTeamData.toy(0, mcq_limit=4)


def _cli(model, suite, out, *extra):
    return main(["redteam", f"m={model}", "--suite", str(suite), "--out", str(out), "--mcq-limit", "4",
                 "--no-progress", *extra])  # fmt: skip


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _run(model, adversary, seed, forget_after, losses=(2.0, 1.0), forget_loss=1.0):
    after = dataclasses.replace(SCORES, forget_acc=forget_after, forget_loss=forget_loss)
    return AttackRun(model, adversary, seed, {}, SCORES, after, tuple(losses))


def _results(*runs, models=("m",)):
    return RedTeamResults(before=dict.fromkeys(models, SCORES), runs=tuple(runs), chance=0.25)


# ------------------------------------------------------------------------------------ 1. overwrite and manifest
def test_overwrite_refuses_a_folder_we_did_not_write(tiny_folder, suite_file, data, tmp_path, capsys, attacks):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("\\chapter{years of work}\n")
    before = _snapshot(thesis)
    assert _cli(tiny_folder, suite_file, thesis, "--overwrite") == 2
    err = capsys.readouterr().err
    assert "holds files jaxtar did not write (thesis.tex)" in err and str(thesis) in err
    with pytest.raises(RunDirError, match="did not write"):
        red_team({"m": tiny_folder}, [ADV], data, out_dir=thesis, overwrite=True, progress=False)
    with pytest.raises(RunDirError, match="did not write"):
        write_report(_results(_run("m", "a", 0, 0.5)), thesis, overwrite=True)
    assert _snapshot(thesis) == before and attacks == []  # refused before any compute, nothing written


def test_overwrite_replaces_only_the_files_our_manifest_lists(tiny_folder, suite_file, tmp_path, capsys, attacks):
    out = tmp_path / "rt"
    assert _cli(tiny_folder, suite_file, out) == 0 and attacks == ["safe-adamw"]
    assert read_manifest(out) == ["attack_loss.png", "forget_accuracy.png", "results.json", "results.md"]
    (out / "notes.txt").write_text("my notes")
    (out / "old.png").write_bytes(b"an older report's plot")
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, "files": manifest["files"] + ["old.png"]}))
    inode, notes = out.stat().st_ino, (out / "notes.txt").read_bytes()
    assert _cli(tiny_folder, suite_file, out) == 2  # ours, but no --overwrite
    assert "already holds red-team results" in capsys.readouterr().err
    assert _cli(tiny_folder, suite_file, out, "--overwrite", "--seeds", "3") == 0
    assert [r.seed for r in RedTeamResults.load(out).runs] == [3]
    assert (out / "notes.txt").read_bytes() == notes and not (out / "old.png").exists()  # listed: removed
    assert out.stat().st_ino == inode  # files replaced one by one; the folder itself was never renamed
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MANIFEST, ".jaxtar.lock", "notes.txt", "attack_loss.png", "forget_accuracy.png", "results.json", "results.md"]
    )


def test_overwrite_refuses_an_unlisted_file_with_our_name(tmp_path):
    out = tmp_path / "rt"
    write_report(_results(_run("m", "a", 0, 0.5)), out)
    (out / MANIFEST).write_text(json.dumps({"kind": "jaxtar-results", "files": ["results.json"]}))
    before = _snapshot(out)
    with pytest.raises(RunDirError, match="holds attack_loss.png, forget_accuracy.png, results.md, which jaxtar did"):
        write_report(_results(_run("m", "a", 0, 0.7)), out, overwrite=True)
    (out / MANIFEST).write_text(json.dumps({"kind": "jaxtar-results", "files": ["../thesis.tex"]}))
    with pytest.raises(RunDirError, match="is not a jaxtar results manifest"):
        write_report(_results(_run("m", "a", 0, 0.7)), out, overwrite=True)
    assert {k: v for k, v in _snapshot(out).items() if k != MANIFEST} == {
        k: v for k, v in before.items() if k != MANIFEST
    }


# ------------------------------------------------------------------------------------------------------ 2. lock
def test_a_second_red_team_into_a_locked_folder_is_refused(tiny_folder, suite_file, data, tmp_path, capsys, attacks):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    ours = tmp_path / "ours"
    write_report(_results(_run("m", "a", 0, 0.5)), ours)
    for folder, extra in ((fresh, ()), (ours, ("--overwrite",))):
        with RunLock(folder):  # another writer (a second open file description conflicts like another process)
            before = _snapshot(folder)
            assert _cli(tiny_folder, suite_file, folder, *extra) == 2
            assert "is in use by pid" in capsys.readouterr().err
            with pytest.raises(RunLockedError):
                red_team({"m": tiny_folder}, [ADV], data, out_dir=folder, overwrite=True, progress=False)
            with pytest.raises(RunLockedError):
                write_report(_results(_run("m", "a", 0, 0.9)), folder, overwrite=True)
            assert _snapshot(folder) == before
    assert attacks == []


def test_the_folder_is_locked_for_the_whole_run(tiny_folder, data, tmp_path, attacks, monkeypatch):
    out, seen = tmp_path / "rt", []
    fake = redteam_module.run_attack

    def attack_and_probe_the_lock(*args, **kw):
        try:
            RunLock(out).acquire().release()
            seen.append("free")
        except RunLockedError:
            seen.append("locked")
        return fake(*args, **kw)

    monkeypatch.setattr(redteam_module, "run_attack", attack_and_probe_the_lock)
    red_team({"m": tiny_folder}, [ADV], data, seeds=(0, 1), out_dir=out, progress=False)
    assert seen == ["locked", "locked"]
    RunLock(out).acquire().release()  # released at the end


# --------------------------------------------------------------------------------------------- 3. diverged runs
def test_diverged_runs_are_left_out_of_means_and_worst_cases(tmp_path):
    nan = math.nan
    res = _results(
        _run("m", "a", 0, 0.4), _run("m", "a", 1, 0.6), _run("m", "a", 2, 0.95, losses=(2.0, nan)),  # 1 of 3 diverged
        _run("m", "b", 0, 1.0, losses=(nan, nan)), _run("m", "b", 1, 1.0, forget_loss=nan),  # weights broken
        _run("m", "c", 0, 0.3),
    )  # fmt: skip
    per = res.per_adversary("m")
    assert per["a"]["forget_after"] == pytest.approx(0.5) and per["a"]["diverged"] == 1 and per["a"]["seeds"] == 3
    assert per["a"]["last_loss"] == 1.0 and per["b"]["diverged"] == 2 and math.isnan(per["b"]["forget_after"])
    s = res.summary("m")
    assert (s.worst_forget_after, s.worst_adversary) == (pytest.approx(0.5), "a")  # not b's broken 1.0
    assert s.mean_forget_after == pytest.approx(0.4) and s.min_retain_after == 0.75
    assert s.diverged_runs == 3 and s.diverged_adversaries == ("b",) and s.runs == 6
    table = markdown_table(res)
    assert "| m | a | 3 (1 diverged) | 50.0 | 50.0 | 75.0 | 75.0 | 2.000 → 1.000 |" in table
    assert "| m | b | 2 (2 diverged) | 50.0 | diverged | 75.0 | diverged | diverged |" in table
    assert "| **m** | **mean over 2 adversaries** | 6 (3 diverged) |" in table
    assert "| **m** | **worst case** (a) | | | **50.0** |" in table and "nan" not in table.lower()
    raw = res.to_dict()
    assert raw["summary"]["m"]["diverged_runs"] == 3 and raw["summary"]["m"]["per_adversary"]["a"]["diverged"] == 1
    assert [r["diverged"] for r in raw["runs"]] == [False, False, True, True, True, False]
    same = lambda a, b: np.testing.assert_equal(dataclasses.asdict(a), dataclasses.asdict(b))  # NaN == NaN
    same(RedTeamResults.from_dict(json.loads(json.dumps(raw))).summary("m"), s)
    write_report(res, tmp_path / "rt")  # plots and strict JSON with diverged runs
    same(RedTeamResults.load(tmp_path / "rt").summary("m"), s)


def test_a_model_whose_every_run_diverged_says_so(tmp_path):
    res = _results(_run("m", "a", 0, 0.9, losses=(math.nan,)), _run("m", "b", 0, 0.8, losses=(1.0, math.inf)))
    s = res.summary("m")
    assert s.worst_adversary == "" and math.isnan(s.worst_forget_after) and s.diverged_adversaries == ("a", "b")
    table = markdown_table(res)
    assert "| **m** | **worst case** | | | **every run diverged** |" in table and "nan" not in table.lower()
    write_report(res, tmp_path / "rt")
    assert json.loads((tmp_path / "rt" / "results.json").read_text())["summary"]["m"]["worst_forget_after"] is None


# ------------------------------------------------------------------------------------------------ 4. suite files
@pytest.mark.parametrize(
    "text, message",
    [
        ('!!python/object/apply:os.system ["touch {marker}"]\n', "is not plain YAML data"),
        ("- !!python/name:os.system\n", "is not plain YAML data"),
        ("a: [\n", "is not plain YAML data"),
        ("just text\n", "must hold a non-empty list of adversaries"),
        ("[]\n", "must hold a non-empty list of adversaries"),
        ("{adversaries: 5}\n", "must hold a non-empty list of adversaries"),
        ("{suite: []}\n", "expected the one key 'adversaries'"),
        ("- 3\n", "adversary 1 must be a mapping of Adversary fields"),
        ("- {optimizer: adamw, lr: fast}\n", "adversary 1.lr must be a number, got 'fast'"),
        ("- {optimizer: adamw, lr: 1.0e-3, lr: 1e-3}\n", "duplicate key 'lr'"),
        ("- {optimizer: adamw, steps: 2.5}\n", "adversary 1.steps must be an integer"),
        ("- {optimizer: adamw, schedule: {kind: cosine, foo: 1}}\n", "unknown Schedule field(s) ['foo']"),
        ("- {optimizer: adamw, lora: 5}\n", "adversary 1.lora must be a mapping of LoraSpec fields or null"),
        ("- {optimizer: adamw, lr: -1.0}\n", "adversary 1: Adversary.lr must be > 0"),
    ],
)
def test_bad_suite_files_are_clean_config_errors(tiny_folder, tmp_path, capsys, attacks, text, message):
    marker = tmp_path / "MARKER"
    suite = tmp_path / "suite.yaml"
    suite.write_text(text.replace("{marker}", str(marker)))
    with pytest.raises(ConfigError, match="suite file") as err:
        load_suite(suite)
    assert message in str(err.value) and str(suite) in str(err.value)
    out = tmp_path / "never"
    assert _cli(tiny_folder, suite, out) == 2
    printed = capsys.readouterr().err
    assert message in printed and str(suite) in printed and "Traceback" not in printed
    assert not out.exists() and not marker.exists() and attacks == []


def test_a_suite_file_reads_1e_3_as_a_number(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text("- {optimizer: adamw, lr: 1e-3, steps: 2}\n")
    assert load_suite(suite)[0].lr == 1e-3  # one YAML reader for every config file (jaxtar.config.yaml_text)


# ------------------------------------------------------------------------------------------ 5. other bad inputs
@pytest.mark.parametrize(
    "case, message",
    [
        ("missing-model", "not a model folder"),
        ("broken-model", "config.json"),
        ("unknown-field", "adversary 1: unknown Adversary field(s) ['lrr']"),
        ("out-under-a-file", "cannot create results folder"),
        ("out-is-a-file", "is a file, not a folder"),
        ("mcq-limit", "--mcq-limit must be >= 1"),
        ("eval-batch-size", "--eval-batch-size must be >= 1"),
        ("same-seed-twice", "seeds must be distinct"),
    ],
)
def test_bad_inputs_fail_before_the_folder_is_created(tiny_folder, suite_file, tmp_path, capsys, attacks, case,
                                                      message):  # fmt: skip
    model, suite, out, extra = tiny_folder, suite_file, tmp_path / "never", []
    named = {"missing-model": tmp_path / "no-model", "broken-model": tmp_path / "broken"}.get(case)
    if case == "broken-model":
        named.mkdir()
        (named / "config.json").write_text("{")
    if case == "unknown-field":
        suite = named = tmp_path / "suite.yaml"
        suite.write_text("- {optimizer: adamw, lrr: 0.01, steps: 3}\n")
    if case in ("out-under-a-file", "out-is-a-file"):
        named = tmp_path / "thesis.tex"
        named.write_text("mine")
        out = named / "rt" if case == "out-under-a-file" else named
    extra = {"mcq-limit": ["--mcq-limit", "0"], "eval-batch-size": ["--eval-batch-size", "0"],
             "same-seed-twice": ["--seeds", "1", "1"]}.get(case, [])  # fmt: skip
    model = named if case in ("missing-model", "broken-model") else model
    assert _cli(model, suite, out, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and (named is None or str(named) in err)
    assert not (tmp_path / "never").exists() and attacks == []
    if case.startswith("out-"):
        assert (tmp_path / "thesis.tex").read_text() == "mine"
