"""The subcommand registry: each module of `jaxtar.commands` registers its subcommands here on import.

`jaxtar.cli` imports every command module and builds its parser from `SUBCOMMANDS`; the command modules import
only this registry, never the CLI (no arrow back up).

Example:
    >>> @subcommand("hello", "print a greeting", lambda p: p.add_argument("--name", default="world"))
    ... def run_hello(args):
    ...     print(f"hello {args.name}")
    ...     return 0
    >>> help_text, configure, fn = SUBCOMMANDS.pop("hello")
    >>> help_text, fn is run_hello
    ('print a greeting', True)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]

SUBCOMMANDS: dict[str, tuple[str, Configure, Run]] = {}


def subcommand(name: str, help_text: str, configure: Configure) -> Callable[[Run], Run]:
    """Registers ``fn(args) -> exit code`` as ``jaxtar NAME``; ``configure(parser)`` adds its arguments."""

    def register(fn: Run) -> Run:
        SUBCOMMANDS[name] = (help_text, configure, fn)
        return fn

    return register
