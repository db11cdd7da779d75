"""Decoder defence runs (TAR, random mapping, the baselines): the sections of a :class:`DefenceConfig`, its presets
and its flags.

A defence run is a :class:`DefenceConfig` with six sections — ``model``, ``data``, ``run``, ``tar``,
``random_mapping`` and ``baseline`` — each a frozen dataclass validated in ``__post_init__``. Presets are YAML files in
``jaxtar/configs/`` (or any path) with the same sections; overrides are dotted keys (``tar.outer_steps=10``), and the
CLI turns every field into a flag (``--tar.outer-steps 10``) through :func:`add_config_flags`. Loading, overrides and
flags are the generic mechanism of `jaxtar.config.sections`.

Example:
    >>> cfg = load_config("toy", {"tar.outer_steps": 3, "run.seed": 1})
    >>> cfg.tar.outer_steps, cfg.run.seed
    (3, 1)
    >>> load_config("toy", {"tar.outer_step": 3})
    Traceback (most recent call last):
    ...
    jaxtar.errors.ConfigError: unknown field 'tar.outer_step'; did you mean 'tar.outer_steps'?
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jaxtar.config.baseline import BASELINE_METHODS, LLMU_NORMAL_LOSSES, BaselineConfig  # noqa: F401 - re-exported
from jaxtar.config.choices import ATTENTION_IMPLS, ESTIMATOR_KINDS
from jaxtar.config.run import RunConfig
from jaxtar.config.sections import (
    PresetFolder,
    add_section_flags,
    check_schedule_free,
    check_sections,
    check_values,
    load_preset,
    non_negative,
    one_of,
    plain,
    positive,
    section_overrides,
    sections_of,
)
from jaxtar.errors import ConfigError
from jaxtar.files import write_text_atomic

PRESET_DIR = Path(__file__).parent.parent / "configs"
DEFENCE_PRESETS = PresetFolder(PRESET_DIR)
DTYPES = ("float32", "bfloat16")
TAMPER_LOSSES = ("entropy", "ce_ascent", "dpo")
TRAIN_ADVERSARY_SCHEDULES = ("constant", "warmup_cosine")
TAR_SETTINGS = ("bio", "cyber", "refusal")
TAMPER_ROLES = ("forget", "forget_alt")
EXPORT_ITERATES = ("x", "y")
# Top-level preset sections owned by other commands (red team, demo); loaded presets may carry them.
EXTERNAL_SECTIONS = ("redteam", "eval", "demo")


@dataclass(frozen=True)
class ModelConfig:
    """The model to defend.

    Args:
        path: HF folder, Hub id, ``.gguf`` file, ``toy`` (the toy-world base model) or ``smollm2`` (offline GGUF).
        tokenizer: tokenizer folder / id; None = the one beside the model (the toy world's for ``toy``).
        dtype: parameter (master-weight) dtype.
        compute_dtype: activation dtype (``bfloat16`` = mixed precision); None = the parameter dtype.
        attention_impl: ``reference`` (jaxtar's own einsum attention), ``xla`` (``jax.nn.dot_product_attention``)
            or ``cudnn`` (its fused cuDNN kernel: NVIDIA GPUs, bf16 compute; a second-order TAR estimator runs
            ``xla`` instead, as cuDNN's kernel has no second derivative, and says so).
        allow_nonfinite: load weights that hold NaN / inf (with a warning) instead of refusing them.
    """

    path: str = "toy"
    tokenizer: str | None = None
    dtype: str = "float32"
    compute_dtype: str | None = None
    attention_impl: str = "reference"
    allow_nonfinite: bool = False

    def __post_init__(self) -> None:
        check_values(self)
        if not self.path:
            raise ConfigError("ModelConfig.path must be non-empty")
        one_of(self, "dtype", DTYPES)
        one_of(self, "compute_dtype", DTYPES, optional=True)
        one_of(self, "attention_impl", ATTENTION_IMPLS)
        if self.attention_impl == "cudnn" and (self.compute_dtype or self.dtype) == "float32":
            raise ConfigError("ModelConfig.attention_impl 'cudnn' needs bfloat16 compute: set compute_dtype bfloat16")


@dataclass(frozen=True)
class DataConfig:
    """Which data plays which role. A source is ``toy:<role>`` (the toy world), a registry name of
    ``jaxtar.data.sources.DATASETS``, ``<registry name>@<local file>`` (that spec read from a local copy), or a local
    file of text. None = the role is not used.

    Args:
        forget: hazardous text: adversary SFT data, and (split off, ``heldout_fraction``) the tamper-loss batches.
        forget_alt: a second hazardous source (bio: camel-bio).
        retain: benign text for the retain loss (and ``retain_to_forget`` adversaries).
        ood: out-of-distribution hazardous text.
        harmful: refusal setting: preference pairs whose (prompt, rejected) are the adversary's SFT data.
        preferences: refusal setting: preference pairs (chosen = refusal, rejected = harmful) for the DPO tamper loss.
        sft: refusal setting: text for the post-TAR SFT phase (default: ``retain``).
        max_length: tokens per row.
        heldout_fraction: share of each of ``tamper_roles`` held out for the tamper loss (disjoint from the
            adversary's share: a seeded split of the texts, equal texts on the same side).
        tamper_roles: the roles whose held-out shares make up the tamper-loss data (x_TR); the official bio run holds
            out 20 % of pile-bio and of camel-bio: ``[forget, forget_alt]``.
        limit: keep at most this many examples per source.

    A text source may be a mixture, ``a + b`` (all rows of each) or ``a*2 + b*1`` (shares 2 : 1, as many rows as
    the scarcest source allows, no row repeated): the official bio retain set is
    ``pile-bio-retain*2 + magpie-bio-filtered*1`` (`jaxtar.data.mixture`).
    """

    forget: str | None = "toy:forget"
    forget_alt: str | None = None
    retain: str | None = "toy:retain"
    ood: str | None = None
    harmful: str | None = None
    preferences: str | None = None
    sft: str | None = None
    max_length: int = 64
    heldout_fraction: float = 0.2
    tamper_roles: tuple[str, ...] = ("forget",)
    limit: int | None = None

    def __post_init__(self) -> None:
        check_values(self)
        positive(self, "max_length", "limit")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ConfigError(f"DataConfig.heldout_fraction must be in (0, 1), got {self.heldout_fraction!r}")
        bad = [r for r in self.tamper_roles if r not in TAMPER_ROLES]
        if not self.tamper_roles or bad or len(set(self.tamper_roles)) != len(self.tamper_roles):
            raise ConfigError(
                f"DataConfig.tamper_roles must be distinct roles among {list(TAMPER_ROLES)}, "
                f"got {list(self.tamper_roles)}"
            )


@dataclass(frozen=True)
class TarConfig:
    """TAR (docs/methods.md#tar-outer-loop); defaults are the paper's bio setting
    (docs/methods.md#tar-hyper-parameters).

    Args:
        outer_steps: outer (defence) steps N.
        lr, warmup_steps, b1, b2, eps, weight_decay: the schedule-free AdamW outer optimiser.
        inner_steps: adversary steps K per outer step.
        tamper_every: record the tamper loss every s-th inner step.
        tamper_rate: weight exp(rate * (j - K)) of the record after step j.
        lambda_tr, lambda_retain: weights of the tamper-resistance and retain gradients.
        lambda_representation: weight of the representation distance inside the retain loss (paper: 1).
        tamper_loss: ``entropy`` (knowledge restriction, the paper's: the attacked model's negative entropy on held-out
            forget text), ``ce_ascent`` (the attacked model's negative cross-entropy on the same text: gradient
            ascent on the attacker's own loss, the alternative the paper reports as weaker) or ``dpo`` (refusal).
        dpo_beta: DPO inverse temperature.
        setting: train-time adversary suite of `jaxtar.attacks.tar_train_adversaries`.
        adversary_lrs: replace the suite's learning rates (e.g. for a toy model); None keeps them.
        adversary_lora_rank: the train-time adversaries fine-tune LoRA adapters of this rank (alpha = 2 x rank, no
            dropout, on every projection) instead of every weight; None = full-parameter attacks (the paper's).
        adversary_schedule: the train-time adversaries' learning-rate schedule: ``constant`` (the paper's) or
            ``warmup_cosine`` (linear warmup over K // 8 steps, then cosine decay to 0 at step K, like Qi et al.'s
            attack).
        adversaries_per_step: A adversaries drawn per outer step, vmapped (their meta-gradients are averaged).
        adversary_chunk_size: run the A adversaries in chunks of this many, one chunk after another: bounds memory to
            a chunk's, same result up to float rounding. None = all A as one vmap (on a 2-core CPU one vmap was
            0.93-1.27x the speed of one at a time: docs/benchmarks.md, TAR outer step).
        adversary_batch_size, tamper_batch_size, retain_batch_size: sequences per batch.
        estimator: meta-gradient estimator (``tar`` = the paper's first order; ``exact``/``remat`` = second order).
        truncation: T for ``estimator: truncated``.
        unmasked_losses: parity with the reference code (entropy and hidden-state losses over padding too).
        retain_anchor: the frozen model of the representation loss: ``start`` (the weights TAR starts from, e.g. the
            random-mapped model), ``base`` (the model those weights were made from, as the starting export's
            ``jaxtar_provenance.json`` records) or a model path / Hub id (official: the original instruct model).
            Loaded once, sharded like the weights; it must have the same architecture.
        export_iterate: the schedule-free iterate handed on and exported: ``x`` (the average, what evaluation
            mode uses) or ``y`` (the gradient point; the official code never switches to eval mode and saves it).
        max_grad_norm: clip the outer gradient to this global norm; None = no clipping (the paper's choice).
        loss_chunk_size: compute the LM losses (attack CE, tamper entropy / DPO, retain CE) this many tokens at a
            time from the final hidden states, so the [batch, seq, vocab] logits never exist at once (same values;
            for large vocabularies such as Llama-3's 128k: ~1024-4096); None = all at once.
        sft_steps, sft_lr, sft_batch_size: the refusal setting's post-TAR SFT phase (AdamW; 0 steps = none).
    """

    outer_steps: int = 750
    lr: float = 2e-5
    warmup_steps: int = 32
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    inner_steps: int = 64
    tamper_every: int = 4
    tamper_rate: float = 0.0625
    lambda_tr: float = 4.0
    lambda_retain: float = 1.0
    lambda_representation: float = 1.0
    tamper_loss: str = "entropy"
    dpo_beta: float = 0.1
    setting: str = "bio"
    adversary_lrs: tuple[float, ...] | None = None
    adversary_lora_rank: int | None = None
    adversary_schedule: str = "constant"
    adversaries_per_step: int = 1
    adversary_chunk_size: int | None = None
    adversary_batch_size: int = 32
    tamper_batch_size: int = 64
    retain_batch_size: int = 64
    estimator: str = "tar"
    truncation: int | None = None
    unmasked_losses: bool = False
    retain_anchor: str = "start"
    export_iterate: str = "x"
    max_grad_norm: float | None = None
    loss_chunk_size: int | None = None
    sft_steps: int = 0
    sft_lr: float = 2e-5
    sft_batch_size: int = 32

    def __post_init__(self) -> None:
        check_values(self)
        positive(self, "outer_steps", "inner_steps", "tamper_every", "dpo_beta", "adversaries_per_step")
        positive(self, "adversary_batch_size", "tamper_batch_size", "retain_batch_size", "sft_lr", "sft_batch_size")
        positive(self, "max_grad_norm", "adversary_chunk_size", "loss_chunk_size", "adversary_lora_rank")
        non_negative(self, "lambda_tr", "lambda_retain", "lambda_representation", "sft_steps", "tamper_rate")
        check_schedule_free(self)
        if self.tamper_every > self.inner_steps:
            raise ConfigError(
                f"TarConfig.tamper_every ({self.tamper_every}) must be <= inner_steps ({self.inner_steps}): "
                "no tamper loss would be recorded"
            )
        one_of(self, "tamper_loss", TAMPER_LOSSES)
        one_of(self, "adversary_schedule", TRAIN_ADVERSARY_SCHEDULES)
        one_of(self, "setting", TAR_SETTINGS)
        one_of(self, "estimator", ESTIMATOR_KINDS)
        one_of(self, "export_iterate", EXPORT_ITERATES)
        if not self.retain_anchor:
            raise ConfigError("TarConfig.retain_anchor must be 'start', 'base' or a model path, got ''")
        if (self.estimator == "truncated") != (self.truncation is not None):
            raise ConfigError("TarConfig.truncation must be set exactly when estimator is 'truncated'")
        if self.adversary_lrs is not None and not (self.adversary_lrs and all(lr > 0 for lr in self.adversary_lrs)):
            raise ConfigError(f"TarConfig.adversary_lrs must be positive numbers, got {self.adversary_lrs!r}")


@dataclass(frozen=True)
class RandomMappingConfig:
    """The random-mapping initial safeguard (docs/methods.md#random-mapping): schedule-free AdamW on
    ``lambda_random_mapping * (1 - |cos(h, R[token])|)`` over forget text + ``lambda_retain * CE`` on retain text.

    Args:
        steps: optimiser steps.
        lr, warmup_steps, b1, b2, eps, weight_decay: the schedule-free AdamW optimiser.
        lambda_random_mapping, lambda_retain: loss weights.
        mapping_seed: seed of the random matrix R.
        forget_batch_size, retain_batch_size: sequences per batch.
        unmasked_losses: parity with the reference code (padding positions count).
    """

    steps: int = 200
    lr: float = 2e-5
    warmup_steps: int = 20
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    lambda_random_mapping: float = 1.0
    lambda_retain: float = 1.0
    mapping_seed: int = 0
    forget_batch_size: int = 32
    retain_batch_size: int = 32
    unmasked_losses: bool = False

    def __post_init__(self) -> None:
        check_values(self)
        positive(self, "steps", "forget_batch_size", "retain_batch_size")
        non_negative(self, "lambda_random_mapping", "lambda_retain", "mapping_seed")
        check_schedule_free(self)


@dataclass(frozen=True)
class DefenceConfig:
    """A whole defence run: every section (the method picks the one it uses).

    Example:
        >>> DefenceConfig().tar.inner_steps
        64
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
    tar: TarConfig = field(default_factory=TarConfig)
    random_mapping: RandomMappingConfig = field(default_factory=RandomMappingConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    preset: str = ""

    def __post_init__(self) -> None:
        check_sections(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), the form written to ``config.yaml``."""
        return plain(self)

    def identity(self, method: str) -> dict[str, Any]:
        """The fields that define a run of ``method`` (a resumed run must match them; ``run.*`` and the step
        count may change, so a finished run can be extended)."""
        d = self.to_dict()
        section = d[method]
        section.pop("outer_steps" if method == "tar" else "steps", None)
        d["model"].pop("allow_nonfinite")  # a permission to load, not part of what the run is
        return {"method": method, "model": d["model"], "data": d["data"], method: section, "seed": self.run.seed}


SECTIONS: dict[str, type] = sections_of(DefenceConfig)


def list_presets() -> list[str]:
    """Names of the presets shipped in ``jaxtar/configs``.

    Example:
        >>> "toy" in list_presets()
        True
    """
    return DEFENCE_PRESETS.names()


def load_config(
    preset: str | Path | None = "toy", overrides: Mapping[str, Any] | None = None, *, name: str | None = None
) -> DefenceConfig:
    """A preset (name in ``jaxtar/configs`` or a YAML path; None = the dataclass defaults) plus dotted overrides.

    Args:
        preset: preset name or file.
        overrides: ``{"section.field": value}``; string values are parsed as YAML (so flag text works).
        name: label stored in ``DefenceConfig.preset`` (default: the preset's name).

    Raises:
        ConfigError: unknown preset, section or field; a value of the wrong type; a value the dataclass rejects.
    """
    label, sections = load_preset(preset, SECTIONS, overrides, EXTERNAL_SECTIONS, presets=DEFENCE_PRESETS)
    return DefenceConfig(**sections, preset=label if name is None else name)


def save_config(config: Any, path: str | Path) -> Path:
    """Writes ``config`` (a :class:`DefenceConfig` or any run config with ``to_dict``) as YAML that its loader
    reads back to an equal config.

    Example:
        >>> import tempfile, os
        >>> p = save_config(DefenceConfig(), os.path.join(tempfile.mkdtemp(), "c.yaml"))
        >>> load_config(p, name="") == DefenceConfig()
        True
    """
    d = config.to_dict()
    d.pop("preset", None)
    return write_text_atomic(path, yaml.safe_dump(d, sort_keys=False))


def add_config_flags(parser: Any, sections: tuple[str, ...] = tuple(SECTIONS)) -> None:
    """Adds one ``--section.field`` flag per config field (hyphens or underscores), defaulting to "not given".

    Example:
        >>> import argparse
        >>> p = argparse.ArgumentParser(); add_config_flags(p)
        >>> config_overrides(p.parse_args(["--tar.outer-steps", "5", "--random-mapping.lr", "1e-3"]))
        {'tar.outer_steps': '5', 'random_mapping.lr': '1e-3'}
    """
    add_section_flags(parser, {name: SECTIONS[name] for name in sections}, tag="cfg")


def shorthand_overrides(args: Any) -> dict[str, Any]:
    """``--output`` / ``--resume`` / ``--force`` (every defence's shorthands) as the ``run.*`` overrides they stand for.

    Example:
        >>> import argparse
        >>> shorthand_overrides(argparse.Namespace(output="runs/x", resume=True, force=False))
        {'run.output_dir': 'runs/x', 'run.resume': True}
    """
    flags = {"run.output_dir": args.output, "run.resume": args.resume or None, "run.force": args.force or None}
    return {key: value for key, value in flags.items() if value is not None}


def config_overrides(args: Any) -> dict[str, str]:
    """The ``{"section.field": text}`` overrides given as flags (see :func:`add_config_flags`)."""
    return section_overrides(args, "cfg")
