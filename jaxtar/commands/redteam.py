"""``jaxtar redteam`` (attack models with an adversary suite) and ``jaxtar eval`` (score models without attacks)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxtar.commands._registry import subcommand
from jaxtar.errors import ConfigError, InputError


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


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL", help="HF model folder, or NAME=FOLDER (several allowed)")
    p.add_argument("--data", choices=("toy", "bio", "cyber"), default="toy",
                   help="toy world (offline, default) or the REFERENCE §1.5 datasets of a domain")  # fmt: skip
    p.add_argument("--data-seed", type=int, default=0, help="toy-world seed")
    p.add_argument(
        "--local",
        action="append",
        default=[],
        metavar="ROLE=PATH",
        help="local copy of a dataset role: forget_mcq, retain_mcq, shots, forget, retain, ood, forget_alt",
    )
    p.add_argument("--mcq-limit", type=int, default=None, help="score at most this many questions per set")
    p.add_argument("--shots", type=int, default=5, help="few-shot examples for the retain (MMLU) prompts")
    p.add_argument("--eval-batch-size", type=int, default=32)


def _data(args: argparse.Namespace):
    from jaxtar.eval.redteam_inputs import RedTeamData

    if args.mcq_limit is not None and args.mcq_limit < 1:
        raise InputError(f"--mcq-limit must be >= 1, got {args.mcq_limit}")
    if args.eval_batch_size < 1:
        raise InputError(f"--eval-batch-size must be >= 1, got {args.eval_batch_size}")
    if args.data == "toy":
        if args.local:
            raise InputError("--local applies to --data bio/cyber, not the toy world")
        return RedTeamData.toy(args.data_seed, mcq_limit=args.mcq_limit)
    local = {}
    for item in args.local:
        role, sep, path = item.partition("=")
        if not sep:
            raise InputError(f"bad --local {item!r}: use ROLE=PATH")
        local[role] = path
    return RedTeamData.from_sources(args.data, local_paths=local, mcq_limit=args.mcq_limit, shots=args.shots)


def _configure_redteam(p: argparse.ArgumentParser) -> None:
    _add_data_args(p)
    p.add_argument(
        "--suite",
        default="toy",
        help="adversary suite: toy, redteam-bio, redteam-cyber, qi2024, tar-bio, ... or a .json/.yaml file",
    )
    p.add_argument("--out", required=True, help="new results folder (results.json, results.md, plots)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the files of an earlier results folder (only those its manifest lists)")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds per adversary (default: the suite's)")
    p.add_argument("--only", default=None, help="comma-separated substrings: keep adversaries whose name has one")
    p.add_argument("--steps", type=int, default=None, help="rescale every attack to this many steps")
    p.add_argument("--batch-size", type=int, default=None, help="override every attack's batch size")
    p.add_argument("--lr-scale", type=float, default=1.0, help="multiply every attack learning rate")
    p.add_argument("--chunk-steps", type=int, default=50, help="attack steps per compiled chunk")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


@subcommand("redteam", "attack models with an adversary suite; write results.json, a table and plots",
            _configure_redteam)  # fmt: skip
def run_redteam(args: argparse.Namespace) -> int:
    from jaxtar.eval.redteam import red_team
    from jaxtar.eval.redteam_inputs import check_models
    from jaxtar.eval.report import check_output_dir, markdown_table
    from jaxtar.eval.suites import adapt_suite, load_suite

    if any(not 0 <= seed < 2**32 for seed in args.seeds or ()):
        raise ConfigError(f"--seeds must be in [0, {2**32 - 1}] (32-bit seeds), got {args.seeds}")
    models = model_args(args.models)
    check_models(models)
    check_output_dir(args.out, args.overwrite)  # red_team checks again and locks the folder before any compute
    suite = load_suite(args.suite)
    if args.only:
        keys = [k for k in args.only.split(",") if k]
        suite = tuple(a for a in suite if any(k in a.name for k in keys))
        if not suite:
            raise ConfigError(f"--only {args.only!r} matches no adversary of suite {args.suite!r}")
    if args.steps is not None or args.batch_size is not None or args.lr_scale != 1.0:
        suite = adapt_suite(suite, steps=args.steps, batch_size=args.batch_size, lr_scale=args.lr_scale)
    results = red_team(models, suite, _data(args), seeds=args.seeds, out_dir=args.out, overwrite=args.overwrite,
                       chunk_steps=args.chunk_steps, eval_batch_size=args.eval_batch_size,
                       progress=not args.no_progress)  # fmt: skip
    print(markdown_table(results))
    print(f"wrote {args.out}")
    return 0


def _configure_eval(p: argparse.ArgumentParser) -> None:
    _add_data_args(p)
    p.add_argument("--out", default=None, help="also write the scores to this new JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


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
    from jaxtar.eval.report import strict_json

    models = model_args(args.models)
    check_models(models)
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} already exists; refusing to overwrite it (pass --overwrite)")
    data = _data(args)
    scores = evaluate_models(models, data, batch_size=args.eval_batch_size)
    print(_eval_table(scores, data.eval_set.chance))
    if out is not None:
        payload = dict(data=data.name, chance=data.eval_set.chance, scores={k: v.to_dict() for k, v in scores.items()})
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(strict_json(payload), indent=2, allow_nan=False) + "\n")
        print(f"wrote {out}")
    return 0
