"""A whole MLAC run (``jaxtar defend mlac``) on the one defence runner: data, tokenizer and model, a desired-task
warm-up phase, the MLAC phase, outputs — with the checkpoints, ``--resume``, signals, mesh and logs every defence has.

The run folder (new or empty, or the same run with ``--resume``) receives:

- ``model/``: the best-validation MLAC model as a Hugging Face checkpoint (``save_pretrained``) with its tokenizer;
- ``baseline/``: the model MLAC started from (the best desired-task warm-up when ``mlac_run.warmup_steps > 0``);
- ``metrics.jsonl``: the train metrics of every step and one line per validation (``phase`` "warmup" or "mlac");
- ``checkpoints/``, ``run.json``, ``config.yaml``, ``result.json`` and ``summary.json`` (best step / score,
  accuracies of both models on the test split).

Example:
    >>> from jaxtar.config import load_mlac_config
    >>> config = load_mlac_config("mlac-offline", {"mlac.outer_steps": 20, "run.output_dir": "runs/mlac"})
    >>> summary = run_mlac(config).summary  # doctest: +SKIP
    >>> summary["model_dir"]  # doctest: +SKIP
    'runs/mlac/model'
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections import Counter
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxtar.checkpoint import RunDir
from jaxtar.config import MLACConfig, MLACRunConfig, save_config
from jaxtar.data.rows import take_rows
from jaxtar.defenses._inputs import params_sha256
from jaxtar.defenses._loop import Phase, check_divides
from jaxtar.defenses.mlac_train import mlac_phase, place_defence_set
from jaxtar.defenses.runner import Defence, Loaded, RunResult, export_model, run_defence
from jaxtar.errors import InputError
from jaxtar.parallel import gather_json, on_main_process, process_share

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
    from jaxtar.data.bios_tokens import word_tokenizer
    from jaxtar.defenses.mlac import prepare_model
    from jaxtar.models import from_pretrained, load_tokenizer, model_for_config
    from jaxtar.models.bert import BertConfig
    from jaxtar.models.offline import minilm_folder

    if settings.model == "small-bert":
        tokenizer = word_tokenizer(train_word_counts(bios["train"]), min_frequency=2)
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
            raise InputError(f"MLAC needs a BERT encoder, {settings.model!r} is a {model.config.model_type!r} model")
    model, params = prepare_model(model, params, cfg, seed=seed)
    return model, params, tokenizer


def train_word_counts(train: Any) -> Counter:
    """The word counts (`jaxtar.data.bios_tokens.count_words`) of a train split, on every process: each process
    reads and counts its contiguous share of the texts and the counts are added up (a collective across processes),
    so every process fits the same tokenizer without reading every text."""
    from jaxtar.data.bios_tokens import count_words

    share = process_share(len(train))
    mine = count_words(train[share.start : share.stop]["hard_text"])
    return sum((Counter(counts) for counts in gather_json(dict(mine))), Counter())


def encode_splits(bios: Any, tokenizer: Any, max_length: int) -> dict[str, dict[str, np.ndarray]]:
    """Every split as fixed-length arrays (``encode_bios``)."""
    from jaxtar.data.bios_tokens import encode_bios

    return {name: encode_bios(bios[name], tokenizer, max_length) for name in bios}


def defence_split(train: dict[str, Any], num_val: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(defence_train, defence_val)``: the first ``num_val`` rows of ``train`` become the defence's own validation
    data (checkpoint selection), the rest its training data; the attacker's splits (val1 / val2) stay untouched.
    Columns made on demand (`jaxtar.data.rows.TableRows`) stay so in both parts (nothing is read here).

    Example:
        >>> fit, val = defence_split({"gender": np.arange(10)}, 3)
        >>> fit["gender"].tolist(), val["gender"].tolist()
        ([3, 4, 5, 6, 7, 8, 9], [0, 1, 2])
    """
    split = lambda rows: {k: take_rows(v, rows) for k, v in train.items()}  # noqa: E731
    return split(slice(num_val, None)), split(slice(None, num_val))


@functools.lru_cache(maxsize=2)
def _bios(settings: Any):
    return load_bios(settings)


def _load(config: MLACRunConfig, mesh: Mesh | None = None) -> Loaded:
    """The model, built (or loaded) whole; on a mesh in host memory, so no device holds a full copy before the loop
    places its FSDP shards (its heads are re-initialised on the whole model, `jaxtar.defenses.mlac.prepare_model`)."""
    bios = _bios(config.mlac_run)
    where = jax.default_device(jax.local_devices(backend="cpu")[0]) if mesh is not None else contextlib.nullcontext()
    with where:
        model, params, tokenizer = build_model(config.mlac_run, bios, config.mlac, seed=config.mlac.seed)
    return Loaded(model, params, tokenizer, params_sha256(params))


def _defence_data(config: MLACRunConfig, tokenizer: Any) -> dict[str, Any]:
    """The train split, its token rows made on demand (on a mesh each process tokenises the rows of its shards)."""
    from jaxtar.data.bios_tokens import encode_bios_lazily

    return encode_bios_lazily(_bios(config.mlac_run)["train"], tokenizer, config.mlac_run.max_length)


def warmup_config(config: MLACRunConfig) -> MLACConfig:
    """The desired-task warm-up's hyper-parameters (``mlac_run.warmup_*`` over the MLAC ones)."""
    s, cfg = config.mlac_run, config.mlac
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    return MLACConfig.desired_only(**{**fields, "variant": "desired", "outer_lr": s.warmup_lr,
                                      "outer_steps": s.warmup_steps, "outer_batch_size": s.warmup_batch_size,
                                      "eval_every": max(1, s.warmup_steps // 4)})  # fmt: skip


def _phases(config: MLACRunConfig, model: Any, params: Any, tokenizer: Any, mesh: Mesh | None) -> list[Phase]:
    s, cfg = config.mlac_run, config.mlac
    if mesh is not None and mesh.shape["adversary"] > 1:
        raise InputError("MLAC's validation attacks are not split across devices: run.mesh_adversary must be 1")
    check_divides(mesh, {"mlac.outer_batch_size": cfg.outer_batch_size})
    train = _defence_data(config, tokenizer)
    n_val = min(s.val_examples, len(train["gender"]) // 5)  # the defence's own validation: held out from train
    fit, val = defence_split(train, n_val)
    # placed (and, on a mesh, tokenised: each process its own shards) once: the warm-up and the MLAC phase share
    # one device copy of each set
    fit = place_defence_set(model, fit, cfg, mesh)
    val = place_defence_set(model, val, cfg, mesh, name="val")
    opts = FAST_COMPILE if s.fast_compile else None
    baseline = Path(config.run.output_dir) / "baseline"

    def write_baseline(best: Any) -> None:  # every process calls it (a collective across processes)
        export_model(model, best, baseline, tokenizer=tokenizer, overwrite=True)

    phases = []
    if s.warmup_steps:
        phases.append(mlac_phase(model, fit, val, warmup_config(config), name="warmup", compiler_options=opts,
                                 on_end=write_baseline, mesh=mesh))  # fmt: skip
    start = phases[-1].stop if phases else 0
    phases.append(mlac_phase(model, fit, val, cfg, start=start, compiler_options=opts, mesh=mesh))
    return phases


def _finish(config: MLACRunConfig, run_dir: RunDir, result: Any, loaded: Loaded, mesh: Mesh | None) -> dict[str, Any]:
    """``baseline/`` (when there was no warm-up) and the summary: best steps and the test accuracies (on a mesh each
    process tokenises and scores only the test rows of its own shards)."""
    from jaxtar.data.bios_tokens import encode_bios_lazily
    from jaxtar.eval.blocking import desired_accuracy
    from jaxtar.models import from_pretrained

    model, cfg, baseline = loaded.model, config.mlac, run_dir.path / "baseline"
    if not on_main_process(baseline.is_dir, "look for baseline/"):  # the same answer on every process
        export_model(model, loaded.params, baseline, tokenizer=loaded.tokenizer)
    test = encode_bios_lazily(_bios(config.mlac_run)["test"], loaded.tokenizer, config.mlac_run.max_length)
    warm = config.mlac_run.warmup_steps
    summary: dict[str, Any] = {"preset": config.preset, "model": config.mlac_run.model, "data": config.mlac_run.data}
    if "warmup" in result.selected:
        summary["warmup"] = {"best_step": result.selected["warmup"].step,
                             "best_val_desired_ce": result.selected["warmup"].to_json()["score"]}  # fmt: skip
    chosen = result.selected["mlac"]
    accuracy = lambda params: desired_accuracy(model, params, test, cfg.num_desired, cfg.desired_key, mesh=mesh)
    summary.update(
        best_step=chosen.step - warm,  # counted from MLAC's start, as its eval_every is
        best_val_score=chosen.to_json()["score"],
        final_inner_lr=float(np.asarray(result.final_opt_state[1])),
        test_desired_accuracy={"baseline": accuracy(from_pretrained(baseline)[1]), "mlac": accuracy(result.params)},
        model_dir=str(run_dir.model_dir),
        baseline_dir=str(baseline),
        seconds=result.seconds,  # this process's time in the loop (a resumed run's second part only)
    )
    return summary


MLAC = Defence(
    "mlac",
    load=_load,
    build=_phases,
    data_identity=lambda config: {"bios": _data_identity(config.mlac_run)},
    write_config=save_config,
    finish=_finish,
)


def _data_identity(s: Any) -> str:
    from jaxtar.data.bias_in_bios import BIAS_IN_BIOS_REVISION

    if s.data == "synthetic":
        return f"synthetic:{s.num_examples}:seed{s.data_seed}"
    return f"LabHC/bias_in_bios@{BIAS_IN_BIOS_REVISION}:seed{s.data_seed}:max{s.max_examples}"


def run_mlac(config: MLACRunConfig) -> RunResult:
    """Runs (or, with ``run.resume``, resumes) ``config`` into ``run.output_dir`` (module docstring).

    Raises:
        JaxtarError: bad input (nothing written), a folder in use or holding another run, a diverged run.
    """
    return run_defence(MLAC, config)
