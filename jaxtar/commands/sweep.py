"""``jaxtar sweep GRID``: train every variant of a grid file on several seeds, red-team each, rank them by durability
(`jaxtar.sweep`, docs/sweep.md).

Example:
    $ jaxtar sweep toy-smoke --output runs/sweep-smoke                 # ~1-2 CPU-minutes, the plumbing
    $ jaxtar sweep toy-durability --output runs/durability --jobs 2    # the study
    $ jaxtar sweep toy-durability --output runs/durability --resume    # after a kill: continues where it stopped
"""

from __future__ import annotations

import argparse

from jaxtar.commands._registry import subcommand


def _configure(p: argparse.ArgumentParser) -> None:
    p.usage = "jaxtar sweep GRID --output DIR [--resume] [--jobs N] [--no-progress]"
    p.add_argument("grid", metavar="GRID", help="a grid file (YAML) or a shipped grid: toy-smoke, toy-durability")
    p.add_argument("--output", "-o", required=True, metavar="DIR",
                   help="the sweep folder; must be new or empty unless --resume")  # fmt: skip
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep in --output (same grid): skip complete jobs, resume a killed defence, "
                   "rerun an unfinished red team")  # fmt: skip
    p.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=1,
        metavar="N",
        help="variant x seed jobs run at once, each in its own process (default 1: in this process)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (one line per finished job)")  # fmt: skip


@subcommand("sweep", "train and red-team a grid of defence variants on several seeds; rank them by durability",
            _configure)  # fmt: skip
def run_sweep_command(args: argparse.Namespace) -> int:
    from jaxtar.config.sweep import load_sweep, sweep_file
    from jaxtar.sweep.runner import run_sweep

    run_sweep(load_sweep(args.grid), args.output, resume=args.resume, jobs=args.jobs, progress=args.progress,
              source=sweep_file(args.grid))  # fmt: skip
    return 0
