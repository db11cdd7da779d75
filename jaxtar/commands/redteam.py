"""``jaxtar redteam`` (attack models with an adversary suite) and ``jaxtar eval`` (score models without attacks)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxtar.commands._registry import subcommand
from jaxtar.errors import ConfigError, InputError
from jaxtar.toy.named_models import resolve_models


def model_args(values: list[str]) -> dict[str, str]:
    """``name=folder`` or ``folder`` (named after the folder) -> {name: folder}; names must be unique."""
    models: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = Path(value.rstrip("/")).name or value, value
        if not name or not path:
            raise InputError(f"bad model argument {value!r}: use NAME=FOLDER or FOLDER")
        if name in models:
            raise InputError(f"model name {name!r} given twice; name them NAME=FOLDER")
        models[name] = path
    return models


def _sections_of(load, names: tuple[str, ...]):
    def sections_of(preset):
        config = load(preset)
        return config.preset or "default", {name: getattr(config, name) for name in names}

    return sections_of


def _add_config(p: argparse.ArgumentParser, *, red_team: bool) -> None:
    from jaxtar.config.flags import add_preset_flag, add_section_flags
    from jaxtar.config.redteam import (
        EVAL_SECTIONS,
        REDTEAM_PRESETS,
        REDTEAM_SECTIONS,
        load_eval_config,
        load_redteam_config,
    )

    sections = REDTEAM_SECTIONS if red_team else EVAL_SECTIONS
    load = load_redteam_config if red_team else load_eval_config
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="HF model folder or .gguf file, 'toy' (the toy-world base model), 'smollm2', or NAME=MODEL "
                   "(several allowed)")  # fmt: skip
    add_preset_flag(p, default="toy", names=REDTEAM_PRESETS.names(), sections_of=_sections_of(load, tuple(sections)),
                    kind="red-team preset")  # fmt: skip
    prefixes = {name: "run" if name == "run" else "" for name in sections}  # --steps, ...; --run.coordinator, ...
    add_section_flags(p, sections, tag="rt", prefixes=prefixes, title="{section}")


def _config(args: argparse.Namespace, *, red_team: bool):
    from jaxtar.config import section_overrides
    from jaxtar.config.redteam import load_eval_config, load_redteam_config

    load = load_redteam_config if red_team else load_eval_config
    return load(args.preset, section_overrides(args, "rt"))


def _data(config):
    from jaxtar.eval.redteam_inputs import RedTeamData

    if config.data == "toy":
        return RedTeamData.toy(config.data_seed, mcq_limit=config.mcq_limit)
    return RedTeamData.from_sources(config.data, local_paths=config.local_paths(), mcq_limit=config.mcq_limit,
                                    shots=config.shots)  # fmt: skip


def _configure_redteam(p: argparse.ArgumentParser) -> None:
    _add_config(p, red_team=True)


@subcommand("redteam", "attack models with an adversary suite; write results.json, a table and plots",
            _configure_redteam)  # fmt: skip
def run_redteam(args: argparse.Namespace) -> int:
    from jaxtar.eval.redteam import red_team
    from jaxtar.eval.redteam_inputs import check_models
    from jaxtar.eval.report import check_output_dir, markdown_table
    from jaxtar.eval.suites import adapt_suite, load_suite
    from jaxtar.parallel import initialize_distributed, is_main_process, on_main_process

    config = _config(args, red_team=True)
    initialize_distributed(run=config.run)  # before any other JAX call: --run.* flags or the environment
    attack, output = config.attack, config.output
    models = resolve_models(model_args(args.models))
    check_models(models)
    # red_team checks again and locks the folder before any compute; across processes process 0 checks for all
    on_main_process(lambda: check_output_dir(output.out, output.overwrite) and None, "use the results folder")
    suite = load_suite(attack.suite)
    if attack.only_keys():
        suite = tuple(a for a in suite if any(k in a.name for k in attack.only_keys()))
        if not suite:
            raise ConfigError(f"--only {attack.only!r} matches no adversary of suite {attack.suite!r}")
    if attack.steps is not None or attack.batch_size is not None or attack.lr_scale != 1.0:
        suite = adapt_suite(suite, steps=attack.steps, batch_size=attack.batch_size, lr_scale=attack.lr_scale)
    results = red_team(models, suite, _data(config.data), seeds=attack.seeds, out_dir=output.out,
                       overwrite=output.overwrite, chunk_steps=attack.chunk_steps,
                       max_retain_drop=attack.max_retain_drop, eval_batch_size=config.data.eval_batch_size,
                       progress=output.progress, eval_every=attack.eval_every, recover_margin=attack.recover_margin,
                       reference_model=attack.reference_model)  # fmt: skip
    if is_main_process():  # every process ran its share of the grid; process 0 wrote the report
        print(markdown_table(results))
        print(f"wrote {output.out}")
    return 0


def _configure_eval(p: argparse.ArgumentParser) -> None:
    _add_config(p, red_team=False)


def _eval_table(scores: dict, chance: float) -> str:
    from jaxtar.eval.report import percent

    lines = [
        f"Multiple-choice accuracy in % ± one standard error (chance {percent(chance)} %); loss = mean next-token CE "
        "on held-out text.",
        "",
        "| model | forget acc | retain acc | forget loss | retain loss |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in scores.items():
        lines.append(f"| {name} | {percent(s.forget_acc, s.forget_se)} | {percent(s.retain_acc, s.retain_se)} | "
                     f"{s.forget_loss:.3f} | {s.retain_loss:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


@subcommand("eval", "multiple-choice accuracy and loss probes of models, without attacks", _configure_eval)
def run_eval(args: argparse.Namespace) -> int:
    from jaxtar.checkpoint import write_text_atomic
    from jaxtar.eval.redteam import evaluate_models
    from jaxtar.eval.redteam_inputs import check_models
    from jaxtar.files import strict_json
    from jaxtar.parallel import initialize_distributed, is_main_process

    config = _config(args, red_team=False)
    initialize_distributed(run=config.run)  # before any other JAX call (each process scores every model)
    models = resolve_models(model_args(args.models))
    check_models(models)
    out = Path(config.output.out) if config.output.out else None
    if out is not None and out.exists() and not config.output.overwrite:
        raise FileExistsError(f"{out} already exists; refusing to overwrite it (pass --overwrite)")
    data = _data(config.data)
    scores = evaluate_models(models, data, batch_size=config.data.eval_batch_size)
    if not is_main_process():
        return 0
    print(_eval_table(scores, data.eval_set.chance))
    if out is not None:
        payload = dict(data=data.name, chance=data.eval_set.chance, scores={k: v.to_dict() for k, v in scores.items()})
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(strict_json(payload), indent=2, allow_nan=False) + "\n")
        print(f"wrote {out}")
    return 0
