"""Which schedule-free iterate should TAR export? The average ``x`` (jaxtar's default, what evaluation mode uses) or
the gradient point ``y`` (what the official code saves: it never calls ``optimizer.eval()``). Measured on the toy
world with the demo's budgets: random mapping, then one TAR run per iterate (identical training; only the exported
weights differ), then the demo's held-out red team (seven 40-step attacks and the 160-step AdamW attack, seed 0)
against base, random mapping, TAR-x and TAR-y. Not a test; writes ``--out`` (json + md).

    python benchmarks/tar_export_iterate.py --out benchmarks/results/tar_export_iterate   # ~8 CPU-minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a new folder for the runs and the report")
    args = parser.parse_args(argv)

    import jax

    from jaxtar.config import load_config
    from jaxtar.defenses import run_random_mapping, run_tar
    from jaxtar.demo import FULL, _suite, demo_table
    from jaxtar.eval import RedTeamData, red_team
    from jaxtar.toy import toy_base_model_path

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: give a new folder")
    quiet = {"run.progress": False, "run.tensorboard": False}
    t0 = time.time()
    rm = run_random_mapping(load_config("toy", {**quiet, "run.output_dir": str(out / "random-mapping")}))
    models = {"base": str(toy_base_model_path(0)), "random-mapping": str(rm.model_dir)}
    for iterate in ("x", "y"):
        tar = run_tar(load_config("toy", {**quiet, "run.output_dir": str(out / f"tar-{iterate}"),
                                          "model.path": str(rm.model_dir), "tar.export_iterate": iterate}))  # fmt: skip
        models[f"tar-{iterate}"] = str(tar.model_dir)
    train_s = time.time() - t0
    results = red_team(models, _suite(FULL), RedTeamData.toy(0), seeds=(0,), out_dir=out / "redteam", progress=False)
    table = demo_table(results)
    summary = {name: results.summary(name) for name in models}
    numbers = {
        name: {"forget_before": s.before.forget_acc, "retain_before": s.before.retain_acc,
               "retain_loss_before": s.before.retain_loss, "forget_after_mean": s.mean_forget_after,
               "forget_after_worst": s.worst_forget_after, "worst_adversary": s.worst_adversary,
               "retain_after_mean": s.mean_retain_after}
        for name, s in summary.items()
    }  # fmt: skip
    meta = {"date": time.strftime("%Y-%m-%d"), "jax": jax.__version__, "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "train_seconds": round(train_s, 1),
            "seconds": round(time.time() - t0, 1), "numbers": numbers}  # fmt: skip
    (out / "tar_export_iterate.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    (out / "tar_export_iterate.md").write_text(
        f"# TAR's exported schedule-free iterate: x (average) vs y (gradient point)\n\n"
        f"Toy world, demo budgets, one TAR run per iterate, red team seed 0; {meta['date']}, jax {meta['jax']}, "
        f"{meta['cpu_count']} CPUs, {meta['seconds'] / 60:.1f} min.\n\n{table}"
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
