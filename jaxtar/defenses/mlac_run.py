"""A whole MLAC run (``jaxtar defend mlac``): data, tokenizer and model, a desired-task warm-up, MLAC, outputs.

The run folder (must be new or empty; nothing is ever overwritten) receives:

- ``model/``: the best-validation MLAC model as a Hugging Face checkpoint (``save_pretrained``) with its tokenizer;
- ``baseline/``: the model MLAC started from (the desired-task-tuned model when ``run.warmup_steps > 0``);
- ``metrics.jsonl``: one line per validation (``phase`` "warmup" or "mlac"), written as it happens;
- ``config.yaml`` and ``summary.json`` (best step / score, accuracies of both models on the test split, timings).

Example:
    >>> from jaxtar.mlac_config import load_mlac_config
    >>> summary = run_mlac(load_mlac_config("mlac-offline", {"mlac.outer_steps": 20}), "runs/mlac")  # doctest: +SKIP
    >>> summary["model_dir"]  # doctest: +SKIP
    'runs/mlac/model'
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from jaxtar.mlac_config import MLACConfig, MLACRunConfig
from jaxtar.runlock import claim_output_dir

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
BERT_TINY = "google/bert_uncased_L-2_H-128_A-2"


def load_bios(settings: Any):
    """The dataset of a run: the offline synthetic stand-in or ``LabHC/bias_in_bios`` (train/val1/val2/test)."""
    from jaxtar.data.bias_in_bios import load_bias_in_bios, synthetic_bias_in_bios

    if settings.data == "synthetic":
        return synthetic_bias_in_bios(settings.num_examples, seed=settings.data_seed)
    return load_bias_in_bios(seed=settings.data_seed, max_examples=settings.max_examples)


def build_model(settings: Any, bios: Any, cfg: MLACConfig, seed: int = 0):
    """``(model, params, tokenizer)`` of a run with the MLAC head layout (see ``MLACRunSettings.model``)."""
    from jaxtar.data.bias_in_bios import build_word_tokenizer
    from jaxtar.defenses.mlac import prepare_model
    from jaxtar.models import from_pretrained, load_tokenizer, model_for_config
    from jaxtar.models.bert import BertConfig
    from jaxtar.models.offline import minilm_folder

    if settings.model == "small-bert":
        tokenizer = build_word_tokenizer(bios["train"]["hard_text"], min_frequency=2)
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=settings.hidden_size,
                            intermediate_size=settings.intermediate_size, num_layers=settings.num_layers,
                            num_heads=settings.num_heads, max_position_embeddings=settings.max_length)  # fmt: skip
        model = model_for_config(config)
        params = model.init(seed)
    else:
        source = {"minilm": minilm_folder, "bert-tiny": lambda: BERT_TINY}.get(settings.model, lambda: settings.model)()
        model, params = from_pretrained(source)
        tokenizer = load_tokenizer(source)
        if model.config.model_type != "bert":
            raise ValueError(f"MLAC needs a BERT encoder, {settings.model!r} is a {model.config.model_type!r} model")
    model, params = prepare_model(model, params, cfg, seed=seed)
    return model, params, tokenizer


def encode_splits(bios: Any, tokenizer: Any, max_length: int) -> dict[str, dict[str, np.ndarray]]:
    """Every split as fixed-length arrays (``encode_bios``)."""
    from jaxtar.data.bias_in_bios import encode_bios

    return {name: encode_bios(bios[name], tokenizer, max_length) for name in bios}


def defence_split(train: dict[str, np.ndarray], num_val: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(defence_train, defence_val)``: the first ``num_val`` rows of ``train`` become the defence's own validation
    data (checkpoint selection), the rest its training data; the attacker's splits (val1 / val2) stay untouched.

    Example:
        >>> fit, val = defence_split({"gender": np.arange(10)}, 3)
        >>> fit["gender"].tolist(), val["gender"].tolist()
        ([3, 4, 5, 6, 7, 8, 9], [0, 1, 2])
    """
    return {k: v[num_val:] for k, v in train.items()}, {k: v[:num_val] for k, v in train.items()}


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def run_mlac(config: MLACRunConfig, output_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Run ``config`` into the new folder ``output_dir`` (module docstring); returns the summary dict.

    Raises:
        RunDirError: ``output_dir`` exists and is not empty (a FileExistsError), or another process writes it.
    """

    out = Path(output_dir)
    with claim_output_dir(out, what="MLAC run folder"):  # locked while the run writes; refused if not new
        return _run_mlac(config, out, progress)


def _run_mlac(config: MLACRunConfig, out: Path, progress: bool) -> dict[str, Any]:
    from jaxtar.defenses.mlac_train import train_mlac
    from jaxtar.eval.blocking import desired_accuracy
    from jaxtar.models import save_pretrained

    t0 = time.perf_counter()
    s, cfg = config.run, config.mlac
    (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    bios = load_bios(s)
    model, params, tokenizer = build_model(s, bios, cfg, seed=cfg.seed)
    arrays = encode_splits(bios, tokenizer, s.max_length)
    train = arrays["train"]
    n_val = min(s.val_examples, len(train["gender"]) // 5)  # the defence's own validation: held out from train
    defence_train, defence_val = defence_split(train, n_val)
    opts = FAST_COMPILE if s.fast_compile else None
    metrics_file = (out / "metrics.jsonl").open("a")

    def logger(phase: str):
        def log(record: dict) -> None:
            metrics_file.write(json.dumps({"phase": phase, **record}) + "\n")
            metrics_file.flush()

        return log

    summary: dict[str, Any] = {"preset": config.preset, "model": s.model, "data": s.data}
    try:
        if s.warmup_steps:
            warm = MLACConfig.desired_only(**{**_fields(cfg), "variant": "desired", "outer_lr": s.warmup_lr,
                                              "outer_steps": s.warmup_steps, "outer_batch_size": s.warmup_batch_size,
                                              "eval_every": max(1, s.warmup_steps // 4)})  # fmt: skip
            res = train_mlac(model, params, defence_train, defence_val, warm, log=logger("warmup"),
                             compiler_options=opts, progress=progress)  # fmt: skip
            params = res.best_params
            summary["warmup"] = {"best_step": res.best_step, "best_val_desired_ce": res.best_score}
        save_pretrained(model, params, out / "baseline", tokenizer=tokenizer)
        res = train_mlac(model, params, defence_train, defence_val, cfg, log=logger("mlac"), compiler_options=opts,
                         progress=progress)  # fmt: skip
    finally:
        metrics_file.close()
    save_pretrained(model, res.best_params, out / "model", tokenizer=tokenizer)
    test = arrays["test"]
    summary.update(
        best_step=res.best_step,
        best_val_score=res.best_score,
        final_inner_lr=float(res.state.inner_lr),
        test_desired_accuracy={
            "baseline": desired_accuracy(model, params, test, cfg.num_desired, cfg.desired_key),
            "mlac": desired_accuracy(model, res.best_params, test, cfg.num_desired, cfg.desired_key),
        },  # fmt: skip
        model_dir=str(out / "model"),
        baseline_dir=str(out / "baseline"),
        seconds=time.perf_counter() - t0,
    )
    _write_json(out / "summary.json", summary)
    return summary


def _fields(cfg: MLACConfig) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
