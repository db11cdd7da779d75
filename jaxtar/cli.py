"""The ``jaxtar`` command line: ``demo``, ``generate``, ``convert``, ``defend``, ``redteam``, ``eval``, ``info``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def subcommand(name: str, help_text: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Registers ``fn(args) -> exit code`` as ``jaxtar NAME``."""

    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        SUBCOMMANDS[name] = (help_text, configure, fn)
        return fn

    return register


def _smollm2_path() -> Path:
    from jaxtar.models.offline import smollm2_gguf

    return smollm2_gguf()


def _configure_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="HF folder, Hub id, or .gguf file ('smollm2' = the offline SmolLM2 checkpoint)")
    p.add_argument("prompt", help="user message (sent through the chat template when the tokenizer has one)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)


@subcommand("generate", "generate a reply with a decoder port (KV cache, greedy or sampled)", _configure_generate)
def run_generate(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from jaxtar.models import from_pretrained, load_tokenizer
    from jaxtar.models.generate import generate

    source = _smollm2_path() if args.model == "smollm2" else args.model
    model, params = from_pretrained(source)
    tokenizer = load_tokenizer(source)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": args.prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    else:
        ids = tokenizer(args.prompt)["input_ids"]
    ids = np.asarray(ids)[None]
    out = generate(model, params, ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   top_p=args.top_p, key=jax.random.key(args.seed))  # fmt: skip
    print(tokenizer.decode(np.asarray(out)[0, ids.shape[1] :], skip_special_tokens=True).strip())
    return 0


def _configure_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="HF folder, Hub id or .gguf file")
    p.add_argument("out", help="new folder for the Hugging Face checkpoint (must not exist or be empty)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--allow-nonfinite", action="store_true", help="convert weights holding NaN / inf (warns)")


@subcommand(
    "convert", "load any supported checkpoint into jaxtar and write it as a plain HF folder", _configure_convert
)
def run_convert(args: argparse.Namespace) -> int:
    import jax.numpy as jnp

    from jaxtar.models import from_pretrained, load_tokenizer, save_pretrained
    from jaxtar.models.hf_checks import check_export_dir

    check_export_dir(args.out)  # a bad OUT fails before a long load
    model, params = from_pretrained(args.source, dtype=getattr(jnp, args.dtype), allow_nonfinite=args.allow_nonfinite)
    try:
        tokenizer = load_tokenizer(args.source)
    except Exception as err:  # noqa: BLE001 - a checkpoint without a tokenizer still converts
        print(f"note: no tokenizer written ({type(err).__name__})", file=sys.stderr)
        tokenizer = None
    out = save_pretrained(model, params, args.out, tokenizer=tokenizer)
    print(f"wrote {out}")
    return 0


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


def _configure_info(p: argparse.ArgumentParser) -> None:
    del p  # no options


@subcommand("info", "versions, devices and whether XLA's CPU buffers get huge pages (for bug reports)", _configure_info)
def run_info(args: argparse.Namespace) -> int:
    del args
    import importlib.metadata as md

    import jax

    from jaxtar import __version__, hugepages

    packages = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers")
    versions = ", ".join(f"{name} {md.version(name)}" for name in packages)
    print(f"jaxtar {__version__}; python {sys.version.split()[0]}; {versions}")
    print("devices: " + ", ".join(f"{d} ({d.device_kind})" for d in jax.devices()))
    print(hugepages.status())
    return 0


# Subcommands of later layers live in jaxtar/commands/<name>.py and register themselves on import (found by scan).
def _command_modules() -> list[str]:
    """Every module of ``jaxtar.commands`` (each registers its subcommands on import)."""
    import pkgutil

    import jaxtar.commands

    return sorted(m.name for m in pkgutil.iter_modules(jaxtar.commands.__path__) if not m.name.startswith("_"))


def build_parser() -> argparse.ArgumentParser:
    import importlib

    for name in _command_modules():
        importlib.import_module(f"jaxtar.commands.{name}")
    parser = argparse.ArgumentParser(
        prog="jaxtar", description="Tamper-resistant open-weight models in JAX.", allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, configure, fn) in SUBCOMMANDS.items():
        # allow_abbrev=False: a mistyped flag (--tar.outer_step) is an error, never a prefix of another one
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        configure(p)
        p.set_defaults(run=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxtar`` console script; returns the exit code.

    Every refused input ends here as one line on stderr, in one place: a `jaxtar.errors.JaxtarError` (bad config,
    checkpoint, data, output folder), an ``OSError`` (a path that cannot be read or written; its message names
    it) or a ``ValueError`` exit 2; a diverged defence (`jaxtar.errors.DivergedError`) exits 3; Ctrl-C exits 130.

    Run from the shell (``argv`` None), it first re-executes itself with glibc's huge-page tunable where that
    helps XLA's CPU buffers (`jaxtar.hugepages`; ``JAXTAR_HUGEPAGES=0`` turns this off).
    """
    if argv is None:
        from jaxtar.hugepages import reexec_with_hugepages

        reexec_with_hugepages()  # the same command line, interpreter options included
    args = build_parser().parse_args(argv)
    from jaxtar.errors import exit_code

    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt as err:
        print(f"jaxtar {args.command}: {err or 'interrupted'}", file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:
        print(f"jaxtar {args.command}: error: {err}", file=sys.stderr)
        return max(exit_code(err), 2)


if __name__ == "__main__":
    sys.exit(main())
