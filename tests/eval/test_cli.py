"""`jaxtar redteam` and `jaxtar eval` on the toy world, and their bad-input errors (exit code 2, nothing written)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import jaxtar.commands.redteam  # noqa: F401 - registers the subcommands
from jaxtar.attacks import Adversary
from jaxtar.cli import main
from jaxtar.eval import RedTeamData, RedTeamResults, evaluate_models

ADV = Adversary("adamw", lr=1e-2, steps=7, batch_size=4, name="cli-adamw")


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("suite") / "suite.json"
    path.write_text(json.dumps([dataclasses.asdict(ADV)]))
    return path


def test_eval_and_redteam_commands(tiny_folder, suite_file, tmp_path, capsys):
    """One test so the compiled scorer and attack are shared (xdist spreads tests over workers)."""
    out = tmp_path / "scores.json"
    assert main(["eval", f"base={tiny_folder}", "--mcq-limit", "16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    scores = json.loads(out.read_text())["scores"]["base"]
    expected = evaluate_models({"base": tiny_folder}, RedTeamData.toy(mcq_limit=16))["base"]
    assert scores["forget_acc"] == expected.forget_acc and scores["forget_n"] == 16
    assert scores["retain_loss"] == pytest.approx(expected.retain_loss)
    assert f"| base | {100 * expected.forget_acc:.1f} ± {100 * expected.forget_se:.1f} |" in printed
    assert main(["eval", str(tiny_folder), "--mcq-limit", "16", "--out", str(out)]) == 2  # exists: refused
    assert "refusing to overwrite" in capsys.readouterr().err

    out = tmp_path / "rt"
    argv = ["redteam", f"a={tiny_folder}", f"b={tiny_folder}", "--suite", str(suite_file), "--seeds", "0", "1",
            "--mcq-limit", "16", "--chunk-steps", "5", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    res = RedTeamResults.load(out)
    assert [(r.model, r.adversary, r.seed, len(r.losses)) for r in res.runs] == [
        (m, "cli-adamw", s, 7) for m in "ab" for s in (0, 1)
    ]
    np.testing.assert_equal(res.runs[0].after.to_dict(), res.runs[2].after.to_dict())  # same weights and seed
    assert res.summary("a").worst_forget_after >= res.summary("a").mean_forget_after
    assert "| **a** | **worst case** (cli-adamw)" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"results.json", "results.md", "attack_loss.png", "forget_accuracy.png",
                                               ".jaxtar-results.json", ".jaxtar.lock"}  # fmt: skip


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--suite", "no-such-suite"], "unknown adversary suite 'no-such-suite'"),
        (["--suite", "toy", "--only", "zzz"], "matches no adversary"),
        (["--suite", "toy", "--data", "toy", "--local", "forget=x.txt"], "--local applies to --data bio/cyber"),
    ],
)
def test_redteam_bad_arguments(tiny_folder, tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    assert main(["redteam", str(tiny_folder), "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_redteam_missing_model_and_existing_output(tiny_folder, suite_file, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["redteam", str(tmp_path / "no-model"), "--suite", str(suite_file), "--out", str(out)]) == 2
    assert "not a model folder" in capsys.readouterr().err and not out.exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "results.json").write_text("{}")
    assert main(["redteam", str(tiny_folder), "--suite", str(suite_file), "--out", str(taken)]) == 2
    assert "holds files jaxtar did not write (results.json)" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["results.json"] and (taken / "results.json").read_text() == "{}"
