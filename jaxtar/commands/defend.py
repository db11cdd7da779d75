"""``jaxtar defend METHOD``: run a defence (``tar`` or ``random-mapping``) from a YAML preset plus flag overrides.

``mlac`` is routed to ``jaxtar.commands.mlac`` (its presets and ``--mlac.*`` flags: ``jaxtar.config.mlac``).

Every config field is a flag (``--tar.outer-steps 20``, ``--model.path DIR``, ...; see ``jaxtar defend -h``).

Example:
    $ jaxtar defend random-mapping --preset toy --output runs/rm
    $ jaxtar defend tar --preset toy --model.path runs/rm/model --output runs/tar
    $ jaxtar defend tar --preset toy --model.path runs/rm/model --output runs/tar --resume   # after a kill
"""

from __future__ import annotations

import argparse
import sys

from jaxtar.commands._registry import subcommand
from jaxtar.config import add_config_flags, add_mlac_flags, config_overrides, list_presets, shorthand_overrides

METHOD_NAMES = ("tar", "random-mapping", "mlac")


def _configure(p: argparse.ArgumentParser) -> None:
    p.usage = "jaxtar defend {tar,random-mapping,mlac} [--preset P] [--output DIR] [--resume] [--SECTION.FIELD V ...]"
    p.add_argument("method", choices=METHOD_NAMES, help="the defence to run")
    p.add_argument(
        "--preset", default="toy", help=f"a preset name ({', '.join(list_presets())}) or a YAML file (default: toy)"
    )
    p.add_argument("--output", "-o", default=None, help="run folder (= --run.output-dir); must be new unless --resume")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its latest checkpoint")
    p.add_argument(
        "--force", action="store_true", help="run even when the memory planner predicts it will not fit (= --run.force)"
    )
    add_config_flags(p)
    add_mlac_flags(p)  # jaxtar defend mlac (jaxtar.commands.mlac)


def _summary(result) -> str:
    keys = ("loss", "tamper_loss", "tamper_final", "retain_ce", "representation", "random_mapping", "sft_ce")
    shown = ", ".join(f"{k}={result.metrics[k]:.4g}" for k in keys if k in result.metrics)
    return f"{result.steps} steps in {result.output_dir}" + (f" ({shown})" if shown else "")


@subcommand("defend", "make a model tamper-resistant: TAR or the random-mapping safeguard", _configure)
def run_defend(args: argparse.Namespace) -> int:
    if args.method == "mlac":
        from jaxtar.commands.mlac import defend_mlac

        return defend_mlac(args)
    from jaxtar.config import load_config
    from jaxtar.defenses import METHODS

    config = load_config(args.preset, {**config_overrides(args), **shorthand_overrides(args)})
    result = METHODS[args.method](config)  # bad input: a JaxtarError, exit 2 in jaxtar.cli.main
    if result.interrupted:
        print(
            f"interrupted after {result.steps} steps; a checkpoint is in {result.output_dir}. Continue with the same "
            "command plus --resume.",
            file=sys.stderr,
        )
        return 130
    print(f"{args.method}: {_summary(result)}")
    if result.model_dir is not None:
        print(f"model: {result.model_dir}")
    return 0
