"""``jaxtar info``: versions, devices and whether XLA's CPU buffers get huge pages (for bug reports).

Example:
    $ jaxtar info
"""

from __future__ import annotations

import argparse
import sys

from jaxtar.commands._registry import subcommand


def _configure_info(p: argparse.ArgumentParser) -> None:
    del p  # no options


@subcommand("info", "versions, devices and whether XLA's CPU buffers get huge pages (for bug reports)", _configure_info)
def run_info(args: argparse.Namespace) -> int:
    del args
    import importlib.metadata as md

    import jax

    from jaxtar import __version__
    from jaxtar.commands import _hugepages

    packages = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers")
    versions = ", ".join(f"{name} {md.version(name)}" for name in packages)
    print(f"jaxtar {__version__}; python {sys.version.split()[0]}; {versions}")
    print("devices: " + ", ".join(f"{d} ({d.device_kind})" for d in jax.devices()))
    print(_hugepages.status())
    return 0
