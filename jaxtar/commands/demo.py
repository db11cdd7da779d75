"""``jaxtar demo``: the main job, offline (`jaxtar.demo`): toy base model -> random mapping -> TAR, red-teamed.

Example:
    $ jaxtar demo --output runs/demo
    $ jaxtar demo --quick --no-progress        # the plumbing in 1-2 CPU-minutes; the numbers mean nothing
"""

from __future__ import annotations

import argparse

from jaxtar.commands._registry import subcommand


def _configure_demo(p: argparse.ArgumentParser) -> None:
    from jaxtar.config.flags import add_plain_flags
    from jaxtar.config.tools import DemoConfig

    add_plain_flags(p, {"demo": DemoConfig}, tag="demo")


@subcommand(
    "demo",
    "the main job, offline: toy base model -> random mapping -> TAR, red-teamed with a held-out suite (<= 10 min)",
    _configure_demo,
)
def run_demo(args: argparse.Namespace) -> int:
    from jaxtar.config.sections import settings_from_flags
    from jaxtar.config.tools import DemoConfig
    from jaxtar.demo import run_demo as demo

    config = settings_from_flags(args, {"demo": DemoConfig}, "demo")["demo"]
    demo(config.output, quick=config.quick, seeds=config.seeds, baselines=config.baselines, progress=config.progress)
    return 0
