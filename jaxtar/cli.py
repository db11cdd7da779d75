"""The ``jaxtar`` command line: the entry point only.

Every subcommand lives in its own module of `jaxtar.commands` (``demo``, ``generate``, ``convert``, ``defend``,
``redteam``, ``eval``, ``info``, ``bench``, ...) and registers itself in `jaxtar.commands._registry` on import;
this module finds them by scanning that package, builds the parser, and maps refused input to exit codes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from jaxtar.commands._registry import SUBCOMMANDS

# Listed first in ``jaxtar -h``, in this order; the other command modules follow by name.
_FIRST = ("generate", "convert", "demo", "info")


def _command_modules() -> list[str]:
    """Every module of ``jaxtar.commands`` (each registers its subcommands on import)."""
    import pkgutil

    import jaxtar.commands

    found = sorted(m.name for m in pkgutil.iter_modules(jaxtar.commands.__path__) if not m.name.startswith("_"))
    return [name for name in _FIRST if name in found] + [name for name in found if name not in _FIRST]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    for name in _command_modules():
        importlib.import_module(f"jaxtar.commands.{name}")
    parser = argparse.ArgumentParser(
        prog="jaxtar", description="Tamper-resistant open-weight models in JAX.", allow_abbrev=False
    )
    from jaxtar import __version__

    parser.add_argument("--version", action="version", version=f"jaxtar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, configure, fn) in SUBCOMMANDS.items():
        # allow_abbrev=False: a mistyped flag (--tar.outer_step) is an error, never a prefix of another one
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False, add_help=False)
        configure(p)
        with contextlib.suppress(argparse.ArgumentError):  # a command with presets adds its own -h (it shows the
            p.add_argument("-h", "--help", action="help", help="show this help and exit")  # preset's values)
        p.set_defaults(run=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxtar`` console script; returns the exit code.

    Every refused input ends here as one line on stderr, in one place: a `jaxtar.errors.JaxtarError` (bad config,
    checkpoint, data, output folder), an ``OSError`` (a path that cannot be read or written; its message names
    it) or a ``ValueError`` exit 2; a diverged defence (`jaxtar.errors.DivergedError`) exits 3; Ctrl-C exits 130.
    ``JAXTAR_DEBUG=1`` re-raises a ``ValueError`` / ``OSError`` that is not a ``JaxtarError``, with its traceback.

    Run from the shell (``argv`` None), it first re-executes itself with glibc's huge-page tunable where that
    helps XLA's CPU buffers (`jaxtar.commands._hugepages`; ``JAXTAR_HUGEPAGES=0`` turns this off).
    """
    # transformers advises at import that PyTorch is missing; jaxtar runs without it (loading an export *with
    # transformers* needs it, which the commands that export say), so the advice is noise in the middle of a run
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if argv is None:
        from jaxtar.commands._hugepages import reexec_with_hugepages

        reexec_with_hugepages()  # the same command line, interpreter options included
    args = build_parser().parse_args(argv)
    from jaxtar.errors import JaxtarError, exit_code

    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt as err:
        print(f"{process_tag()}jaxtar {args.command}: {err or 'interrupted'}", file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:
        if os.environ.get("JAXTAR_DEBUG") and not isinstance(err, JaxtarError):
            raise  # a ValueError / OSError that is not ours may be a bug: JAXTAR_DEBUG=1 shows its traceback
        print(f"{process_tag()}jaxtar {args.command}: error: {err}", file=sys.stderr)
        return max(exit_code(err), 2)
    except BaseException:
        if process_tag():  # the traceback follows; say which process of the run it comes from
            print(f"{process_tag()}jaxtar {args.command}: unexpected error", file=sys.stderr)
        raise


def process_tag() -> str:
    """``[process I/N] `` in a run that spans processes (each prints its own errors to its console), else ''.

    Example:
        >>> process_tag()  # one process
        ''
    """
    jax = sys.modules.get("jax")
    if jax is None or not jax.distributed.is_initialized() or jax.process_count() == 1:
        return ""
    return f"[process {jax.process_index()}/{jax.process_count()}] "


if __name__ == "__main__":
    sys.exit(main())
