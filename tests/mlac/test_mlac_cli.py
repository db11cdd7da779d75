"""End to end on the offline synthetic Bias in Bios stand-in, tiny settings: ``jaxtar defend mlac`` (desired-task
warm-up, a few MLAC steps on a small BERT with a word tokenizer) and ``jaxtar redteam-classifier`` (the blocking
evaluation) on its outputs. The mechanics are checked here (files, best checkpoint, no overwrite, the report); that
MLAC lowers post-attack harmful accuracy is checked in test_mlac_train.py."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from safetensors.numpy import load_file

from jaxtar.cli import main

TINY_RUN = [
    "--mlac-run.hidden-size", "16", "--mlac-run.num-layers", "1", "--mlac-run.intermediate-size", "32",
    "--mlac-run.max-length", "24", "--mlac-run.num-examples", "1000", "--mlac-run.warmup-steps", "60",
    "--mlac-run.warmup-lr", "3e-3", "--mlac-run.val-examples", "100", "--mlac-run.fast-compile", "true",
    "--mlac.inner-steps", "1", "--mlac.outer-steps", "4", "--mlac.eval-every", "2", "--mlac.outer-lr", "1e-3",
    "--mlac.calibration-steps", "10", "--mlac.inner-batch-sizes", "[8, 16]", "--mlac.outer-batch-size", "16",
]  # fmt: skip
TINY_BLOCKING = [
    "--ns", "10", "20", "--lrs", "1e-2", "--steps", "20", "--eval-every", "10", "--patience", "2", "--reruns", "2",
    "--data-seeds", "1", "--search-runs", "1", "--eval-examples", "0", "--fast-compile",
]  # fmt: skip
DESIRED_MARGIN = 0.10  # MLAC may cost at most 10 points of desired-task (profession) accuracy here


def test_defend_mlac_then_blocking_evaluation(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["defend", "mlac", "--preset", "mlac-offline", "--output", str(run), *TINY_RUN]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert (run / "model" / "model.safetensors").is_file() and (run / "baseline" / "config.json").is_file()
    assert (run / "model" / "tokenizer.json").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    mlac = [r for r in records if r["phase"] == "mlac" and "val_score" in r]  # validations (global steps)
    assert [r["step"] for r in mlac] == [60, 62, 64] and {r["phase"] for r in records} == {"warmup", "mlac"}
    best = min(mlac, key=lambda r: r["val_score"])  # the best-validation checkpoint is the one saved
    assert summary["best_step"] == best["step"] - 60 and summary["best_val_score"] == best["val_score"]
    acc = summary["test_desired_accuracy"]
    assert acc["mlac"] >= acc["baseline"] - DESIRED_MARGIN
    # a second run into the same folder is refused and the first one is untouched
    assert main(["defend", "mlac", "--output", str(run), *TINY_RUN]) == 2
    assert json.loads((run / "summary.json").read_text()) == summary

    out = tmp_path / "blocking"
    assert main(["redteam-classifier", "--run", str(run), "--random-init", "--output", str(out), *TINY_BLOCKING]) == 0
    result = json.loads((out / "results.json").read_text())
    assert set(result["models"]) == {"mlac", "baseline", "random-init"}
    assert (out / "blocking.png").stat().st_size > 1000 and "| mlac |" in (out / "results.md").read_text()
    assert result["chance"] >= 0.5 and result["eval_examples"] == 25
    assert result["models"]["baseline"]["desired_accuracy"] == acc["baseline"]  # same test split and tokenizer
    for name, res in result["models"].items():
        for n in ("10", "20"):
            cell = res["harmful"][n]
            assert 0.0 <= cell["mean"] <= 1.0 and cell["runs"] == 2 and cell["mode"] in ("probe", "full"), name
            assert len(cell["search"]) == 2  # probe and full, one lr, one budget
    assert result["models"]["random-init"]["desired_accuracy"] is not None
    capsys.readouterr()


def _checkpoint_steps(folder):
    return sorted(int(p.name) for p in (folder / "checkpoints").glob("[0-9]*") if p.name.isdigit())


def test_defend_mlac_resumed_after_kill_9_equals_an_uninterrupted_run(tmp_path, capsys):
    # 8 warm-up + 8 MLAC steps, a checkpoint every step; killed inside the MLAC phase, after a validation (its
    # best-so-far weights live in the checkpoint), resumed: the same model, baseline, metrics and summary
    args = ["defend", "mlac", "--preset", "mlac-offline", *TINY_RUN, "--mlac-run.warmup-steps", "8",
            "--mlac.outer-steps", "8", "--run.checkpoint-every", "1", "--run.keep-checkpoints", "3",
            "--run.progress", "false"]  # fmt: skip
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main([*args, "--output", str(full)]) == 0
    launch = "import sys; from jaxtar.cli import main; sys.exit(main(sys.argv[1:]))"
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-c", launch, *args, "--output", str(killed)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    while proc.poll() is None and not [s for s in _checkpoint_steps(killed) if s >= 11]:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {err[-2000:]}"
    assert not (killed / "model").exists() and 11 <= max(_checkpoint_steps(killed)) < 16
    assert main([*args, "--output", str(killed), "--resume"]) == 0
    assert "resumed from step" in capsys.readouterr().err
    for folder in ("model", "baseline"):
        want, got = load_file(full / folder / "model.safetensors"), load_file(killed / folder / "model.safetensors")
        assert want.keys() == got.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{folder}: {key}")  # bit-identical
    strip = lambda path: [{k: v for k, v in json.loads(line).items() if k != "step_time_s"}
                          for line in path.read_text().splitlines()]  # fmt: skip
    assert strip(killed / "metrics.jsonl") == strip(full / "metrics.jsonl")
    paths = ("model_dir", "baseline_dir", "seconds")  # where and how long differ
    summary = lambda path: {k: v for k, v in json.loads(path.read_text()).items() if k not in paths}
    assert summary(killed / "summary.json") == summary(full / "summary.json")
    # resumed once more when finished: reported, nothing rewritten (summary.json included)
    before = {p.name: p.read_bytes() for p in killed.iterdir() if p.is_file() and p.name != ".jaxtar.lock"}
    assert main([*args, "--output", str(killed), "--resume"]) == 0
    assert "was already complete" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in killed.iterdir() if p.is_file() and p.name != ".jaxtar.lock"} == before
