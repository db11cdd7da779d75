"""``jaxtar demo``: the main job, offline (`jaxtar.demo`): toy base model -> random mapping -> TAR, red-teamed.

Example:
    $ jaxtar demo --output runs/demo
    $ jaxtar demo --quick --no-progress        # the plumbing in 1-2 CPU-minutes; the numbers mean nothing
"""

from __future__ import annotations

import argparse

from jaxtar.commands._registry import subcommand


def _configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--output",
        "-o",
        default=None,
        help="new (or empty) folder for everything the demo writes (default: a fresh runs/demo-<time>)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a few steps per stage: checks the plumbing in 1-2 CPU-minutes; the numbers mean nothing",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="seeds per red-team adversary (default: one; each extra seed adds about two minutes)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (stage headers and table only)")


@subcommand(
    "demo",
    "the main job, offline: toy base model -> random mapping -> TAR, red-teamed with a held-out suite (<= 10 min)",
    _configure_demo,
)
def run_demo(args: argparse.Namespace) -> int:
    from jaxtar.demo import run_demo as demo

    demo(args.output, quick=args.quick, seeds=args.seeds, progress=not args.no_progress)
    return 0
