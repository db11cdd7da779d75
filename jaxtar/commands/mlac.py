"""MLAC commands: ``jaxtar defend mlac`` (routed here from ``defend``) and ``jaxtar redteam-classifier`` (blocking).

Example:
    $ jaxtar defend mlac --preset mlac-offline --output runs/mlac
    $ jaxtar redteam-classifier --run runs/mlac --random-init --output runs/mlac-blocking
    $ jaxtar redteam-classifier mlac=runs/mlac/model tuned=runs/mlac/baseline --ns 20 50 --output runs/b2
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from jaxtar.checkpoint import write_json_atomic
from jaxtar.commands._registry import subcommand
from jaxtar.commands.redteam import model_args
from jaxtar.errors import ConfigError
from jaxtar.runlock import claim_output_dir, is_new_or_empty


# ------------------------------------------------------------------------------------------- jaxtar defend mlac
def defend_mlac(args: argparse.Namespace) -> int:
    """``jaxtar defend mlac``: MLAC presets (``mlac-offline``, ``mlac-minilm``, ``mlac-paper`` or a YAML file) with
    ``--mlac.FIELD`` / ``--mlac-run.FIELD`` and every defence's ``--run.FIELD`` overrides (``--resume``, the mesh,
    checkpoints); writes the run folder of `jaxtar.defenses.mlac_run`."""
    from jaxtar.config import config_overrides, load_mlac_config, mlac_overrides, shorthand_overrides

    overrides = {**config_overrides(args), **mlac_overrides(args), **shorthand_overrides(args)}
    config = load_mlac_config(args.preset, overrides)
    if config.run.output_dir is None:
        raise ConfigError("--output DIR is required (a new folder, or this run's folder with --resume)")
    from jaxtar.parallel import initialize_distributed

    initialize_distributed(run=config.run)  # before any other JAX call: several processes form one mesh
    from jaxtar.defenses.mlac_run import run_mlac

    result = run_mlac(config)  # bad input: a JaxtarError / OSError, exit 2 in jaxtar.cli.main
    if result.interrupted:
        print(f"interrupted after {result.steps} steps; a checkpoint is in {result.output_dir}. Continue with the "
              "same command plus --resume.", file=sys.stderr)  # fmt: skip
        return 130
    summary = result.summary
    acc = summary["test_desired_accuracy"]
    print(f"mlac: best step {summary['best_step']} (val score {summary['best_val_score']:.4g}); test desired "
          f"accuracy {acc['baseline']:.3f} (start) -> {acc['mlac']:.3f} (mlac)")  # fmt: skip
    print(f"model: {summary['model_dir']}\nbaseline: {summary['baseline_dir']}")
    print("(Hugging Face checkpoints; loading them with transformers needs PyTorch: pip install torch)")
    return 0


# ---------------------------------------------------------------------------------- jaxtar redteam-classifier
def _configure_blocking(p: argparse.ArgumentParser) -> None:
    from jaxtar.config.blocking import BLOCKING_SECTIONS
    from jaxtar.config.flags import add_plain_flags

    p.add_argument("models", nargs="*", metavar="MODEL", help="HF classifier folder, or NAME=FOLDER (several allowed)")
    p.add_argument(
        "--run", dest="run_dir", default=None, help="an MLAC run folder: adds its model/, baseline/ and data settings"
    )
    add_plain_flags(p, BLOCKING_SECTIONS, tag="blocking")


def blocking_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The sections of `jaxtar.config.blocking` from the flags: {"blocking", "data", "output"}."""
    from jaxtar.config.blocking import BLOCKING_SECTIONS
    from jaxtar.config.sections import load_preset, section_overrides

    overrides = section_overrides(args, "blocking")
    for key in ("blocking.patience", "blocking.eval_examples"):  # the flags' "0 = off / all" spelling
        if overrides.get(key) == "0":
            overrides[key] = None
    return load_preset(None, BLOCKING_SECTIONS, overrides)[1]


def _data_settings(args: argparse.Namespace, data: Any) -> Any:
    from jaxtar.config import MLACRunSettings
    from jaxtar.config.yaml_text import load_yaml

    base: dict[str, Any] = {}
    if args.run_dir is not None:
        cfg_file = Path(args.run_dir) / "config.yaml"
        if not cfg_file.is_file():
            raise ValueError(f"--run {args.run_dir!r} is not an MLAC run folder (no config.yaml)")
        saved = load_yaml(cfg_file.read_text()) or {}
        run = saved.get("mlac_run", saved.get("run", {}))  # "run" in run folders written before the one runner
        base = {k: run[k] for k in ("data", "num_examples", "max_examples", "max_length", "data_seed") if k in run}
    base.update({k: v for k, v in dataclasses.asdict(data).items() if v is not None})
    return MLACRunSettings(**base)


def _write_report(out: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ns = [str(n) for n in result["config"]["ns"]]
    lines = ["| model | desired acc. | " + " | ".join(f"harmful acc. n={n}" for n in ns) + " |",
             "|---|---|" + "---|" * len(ns)]  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, res in result["models"].items():
        des = res["desired_accuracy"]
        cells = [f"{res['harmful'][n]['mean']:.3f} ± {res['harmful'][n]['std']:.3f} "
                 f"({res['harmful'][n]['mode']}, lr {res['harmful'][n]['lr']:g}, {res['harmful'][n]['steps']} st.)"
                 for n in ns]  # fmt: skip
        lines.append(f"| {name} | {'-' if des is None else f'{des:.3f}'} | " + " | ".join(cells) + " |")
        means = [res["harmful"][n]["mean"] for n in ns]
        stds = [res["harmful"][n]["std"] for n in ns]
        label = name if des is None else f"{name} (desired acc. {des:.2f})"
        ax.errorbar([int(n) for n in ns], means, yerr=stds, marker="o", capsize=3, label=label)
    ax.axhline(result["chance"], color="gray", linestyle="--", label=f"majority class ({result['chance']:.2f})")
    ax.set(xscale="log", xlabel="attacker examples n", ylabel="post-adaptation harmful-task accuracy",
           title="MLAC blocking evaluation")  # fmt: skip
    ax.set_xticks([int(n) for n in ns], ns)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # log axis: only the n ticks are labelled
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "blocking.png", dpi=120)
    plt.close(fig)
    how = "a TPE" if result.get("search_method") == "tpe" else "a grid"
    notes = (f"\nBest-checkpoint accuracy on val2 ({result['eval_examples']} examples), mean ± std over "
             f"{result['config']['data_seeds']} data seeds x {result['config']['reruns']} reruns; the attacker's mode, "
             f"lr and step budget come from {how} search with early stopping (jaxtar.eval.blocking).\n")  # fmt: skip
    (out / "results.md").write_text("\n".join(lines) + "\n" + notes)


def _load_models(paths: dict[str, str], settings: Any, random_init: bool, seed: int):
    """name -> (model, params, encoded splits); each model tokenises the data with its own tokenizer."""
    from jaxtar.defenses.mlac_run import encode_splits, load_bios
    from jaxtar.models import from_pretrained, load_tokenizer, model_for_config

    bios = load_bios(settings)
    out = {}
    for name, path in paths.items():
        model, params = from_pretrained(path)
        try:
            tokenizer = load_tokenizer(path)
        except Exception as err:  # noqa: BLE001 - any loader failure means the folder cannot be used here
            raise ValueError(
                f"{path} has no usable tokenizer ({type(err).__name__}); save one beside the model"
            ) from err
        if model.config.model_type != "bert":
            raise ValueError(f"{name}: the blocking evaluation attacks BERT classifiers, got {model.config.model_type}")
        length = min(settings.max_length, model.config.max_position_embeddings)
        out[name] = (model, params, encode_splits(bios, tokenizer, length))
    if random_init:
        first = next(iter(out.values()))
        out["random-init"] = (first[0], model_for_config(first[0].config).init(seed + 1), first[2])
    return out


def _run_blocking(args: argparse.Namespace) -> int:
    from jaxtar.models import CheckpointError

    def fail(message: str) -> int:
        print(f"jaxtar redteam-classifier: error: {message}", file=sys.stderr)
        return 2

    try:
        sections = blocking_settings(args)
        output = sections["output"]
        paths = model_args(args.models)
        if args.run_dir is not None:
            paths = {
                "mlac": str(Path(args.run_dir) / "model"),
                "baseline": str(Path(args.run_dir) / "baseline"),
                **paths,
            }
        if not paths:
            return fail("give at least one MODEL or --run DIR")
        settings, cfg = _data_settings(args, sections["data"]), sections["blocking"]
        out = Path(output.output)
        if not is_new_or_empty(out):
            return fail(f"{out} already exists and is not empty; choose a new --output (never overwritten)")
        models = _load_models(paths, settings, output.random_init, cfg.seed)
        lock = claim_output_dir(out, what="results folder")  # locked until written; checked again under the lock
    except (ValueError, FileNotFoundError, CheckpointError, OSError) as err:
        return fail(str(err))
    with lock:
        return _blocking_to(out, output.fast_compile, paths, settings, cfg, models)


def _blocking_to(out: Path, fast_compile: bool, paths: dict, settings: Any, cfg: Any, models: dict) -> int:
    from jaxtar.defenses.mlac_run import FAST_COMPILE
    from jaxtar.eval.blocking import blocking_eval

    opts = FAST_COMPILE if fast_compile else None
    data = {k: getattr(settings, k) for k in ("data", "num_examples", "data_seed", "max_length")}
    result: dict[str, Any] = {"models": {}, "data": data}
    num_desired = 28
    for name, (model, params, splits) in models.items():
        res = blocking_eval({name: (model, params)}, splits["val1"], splits["val2"], cfg, test=splits["test"],
                            num_desired=num_desired, compiler_options=opts, log=print)  # fmt: skip
        result["models"][name] = res["models"][name] | {"folder": paths.get(name)}
        result.update(config=res["config"], chance=res["chance"], eval_examples=res["eval_examples"])
        h = res["models"][name]["harmful"]
        print(f"{name}: " + ", ".join(f"n={n}: {v['mean']:.3f}" for n, v in h.items()), flush=True)
    write_json_atomic(out / "results.json", result)
    _write_report(out, result)
    print(f"wrote {out / 'results.json'}, results.md, blocking.png")
    return 0


@subcommand("redteam-classifier", "MLAC's blocking evaluation: fine-tune fresh heads of BERT classifiers on n "
            "examples of the harmful task", _configure_blocking)  # fmt: skip
def run_redteam_classifier(args: argparse.Namespace) -> int:
    return _run_blocking(args)
