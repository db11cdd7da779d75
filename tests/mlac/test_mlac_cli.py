"""End to end on the offline synthetic Bias in Bios stand-in, tiny settings: ``jaxtar defend mlac`` (desired-task
warm-up, a few MLAC steps on a small BERT with a word tokenizer) and ``jaxtar redteam-classifier`` (the blocking
evaluation) on its outputs. The mechanics are checked here (files, best checkpoint, no overwrite, the report); that
MLAC lowers post-attack harmful accuracy is checked in test_mlac_train.py."""

import json

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
    mlac = [r for r in records if r["phase"] == "mlac"]
    assert [r["step"] for r in mlac] == [0, 2, 4] and {r["phase"] for r in records} == {"warmup", "mlac"}
    best = min(mlac, key=lambda r: r["val_score"])  # the best-validation checkpoint is the one saved
    assert summary["best_step"] == best["step"] and summary["best_val_score"] == best["val_score"]
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
