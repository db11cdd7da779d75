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
from jaxtar.config import (
    add_config_flags,
    add_mlac_flags,
    config_overrides,
    list_mlac_presets,
    list_presets,
    shorthand_overrides,
)
from jaxtar.config.flags import add_preset_flag

METHODS_HELP = {
    "tar": "TAR: tamper-resistance training against simulated fine-tuning attacks (presets in jaxtar/configs)",
    "random-mapping": "the random-mapping safeguard TAR starts from in the bio / cyber settings",
    "baseline": "a baseline of TAR's tables: --baseline.method max_entropy|min_posterior|llmu|rmu",
    "mlac": "MLAC: meta-learned adversarial censoring of a BERT classifier (presets in jaxtar/configs/mlac)",
}
METHOD_NAMES = tuple(METHODS_HELP)
EXPORT_NOTE = "a Hugging Face checkpoint; loading it with transformers needs PyTorch: pip install torch"
_OWN_SECTION = {"tar": "tar", "random-mapping": "random_mapping", "baseline": "baseline"}


def _defence_sections(method: str):
    """``sections_of(preset)`` for ``-h``: the sections a method uses, as the preset sets them."""

    def sections_of(preset):
        from jaxtar.config import load_config, load_mlac_config

        if method == "mlac":
            config = load_mlac_config(preset)
            return config.preset or "default", {"run": config.run, "mlac_run": config.mlac_run, "mlac": config.mlac}
        config = load_config(preset)
        names = ("model", "data", "run", _OWN_SECTION[method])
        return config.preset or "default", {name: getattr(config, name) for name in names}

    return sections_of


def _configure_method(p: argparse.ArgumentParser, method: str) -> None:
    mlac = method == "mlac"
    names = list_mlac_presets() if mlac else list_presets()
    add_preset_flag(p, default="mlac-offline" if mlac else "toy", names=names, sections_of=_defence_sections(method))
    p.add_argument("--output", "-o", default=None, help="run folder (= --run.output-dir); must be new unless --resume")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its latest checkpoint")
    p.add_argument(
        "--force", action="store_true", help="run even when the memory planner predicts it will not fit (= --run.force)"
    )
    if mlac:
        add_config_flags(p, ("run",))
        add_mlac_flags(p)
    else:
        add_config_flags(p, ("model", "data", "run", _OWN_SECTION[method]))


def _configure(p: argparse.ArgumentParser) -> None:
    p.usage = (
        f"jaxtar defend {{{','.join(METHOD_NAMES)}}} [--preset P] [--output DIR] [--resume] [--SECTION.FIELD V ...]"
    )
    methods = p.add_subparsers(dest="method", required=True, metavar="METHOD", title="methods (jaxtar defend "
                               "METHOD -h lists a method's flags with its preset's values)")  # fmt: skip
    for method, text in METHODS_HELP.items():
        sub = methods.add_parser(method, help=text, description=text, allow_abbrev=False, add_help=False,
                                 usage=f"jaxtar defend {method} [--preset P] [--output DIR] [--resume] [--force] "
                                 "[--SECTION.FIELD V ...]")  # fmt: skip
        _configure_method(sub, method)


def _summary(result) -> str:
    keys = ("loss", "tamper_loss", "tamper_final", "retain_ce", "representation", "random_mapping", "sft_ce")
    shown = ", ".join(f"{k}={result.metrics[k]:.4g}" for k in keys if k in result.metrics)
    return f"{result.steps} steps in {result.output_dir}" + (f" ({shown})" if shown else "")


@subcommand("defend", "make a model tamper-resistant: TAR, the random-mapping safeguard or MLAC", _configure)
def run_defend(args: argparse.Namespace) -> int:
    if args.method == "mlac":
        from jaxtar.commands.mlac import defend_mlac

        return defend_mlac(args)
    from jaxtar.config import load_config
    from jaxtar.defenses import METHODS
    from jaxtar.parallel import initialize_distributed

    config = load_config(args.preset, {**config_overrides(args), **shorthand_overrides(args)})
    initialize_distributed(run=config.run)  # before any other JAX call: several processes form one mesh
    result = METHODS[args.method](config)  # bad input: a JaxtarError, exit 2 in jaxtar.cli.main
    if result.interrupted:
        print(
            f"interrupted after {result.steps} steps; a checkpoint is in {result.output_dir}. Continue with the same "
            "command plus --resume.",
            file=sys.stderr,
        )
        return 130
    import jax

    if jax.process_index() != 0:  # several processes: process 0 reports for all
        return 0
    print(f"{args.method}: {_summary(result)}")
    if result.model_dir is not None:
        print(f"model: {result.model_dir} ({EXPORT_NOTE})")
    return 0
