"""MLAC configuration: the method's hyper-parameters (`MLACConfig`) and a whole run (`MLACRunConfig`) with presets.

Kept free of JAX imports so the CLI can build its flags cheaply. Presets are Python dicts (``mlac-offline``: a small
BERT with a word tokenizer on the offline synthetic Bias in Bios stand-in; ``mlac-minilm``: the offline
all-MiniLM-L6-v2 checkpoint on the same data; ``mlac-paper``: BERT-Tiny on ``LabHC/bias_in_bios`` with the paper's
hyper-parameters, which needs the Hub) or any YAML file with the sections ``run`` and ``mlac``.

Example:
    >>> cfg = load_mlac_config("mlac-offline", {"mlac.outer_steps": 3})
    >>> cfg.mlac.outer_steps, cfg.run.model
    (3, 'small-bert')
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxtar.config_sections import (
    ConfigError,
    add_section_flags,
    build_section,
    check_values,
    load_yaml,
    merge_overrides,
    section_overrides,
)

VARIANTS = ("mlac", "desired", "joint")
HEADS = ("fresh", "learned")
CALIBRATION_METHODS = ("implicit", "unrolled", "envelope")  # = jaxtar.objectives.calibration.METHODS
ESTIMATORS = ("exact", "remat", "mixed", "truncated", "first_order", "tar")  # = jaxtar.meta.ESTIMATORS
MODELS = ("small-bert", "minilm", "bert-tiny")
DATASETS = ("synthetic", "bias_in_bios")


@dataclass(frozen=True)
class MLACConfig:
    """Hyper-parameters of an MLAC / AC / desired-task run (defaults: the paper's bios setting).

    Example:
        >>> MLACConfig.ac().inner_steps, MLACConfig.paper().grad_norm_penalty
        (0, 1.0)
    """

    variant: str = "mlac"
    inner_steps: int = 16
    inner_batch_sizes: tuple[int, ...] = (12, 24, 48)
    inner_lr: float = 3e-4
    learn_inner_lr: bool = True
    inner_lr_lr: float = 1e-4
    inner_lr_bounds: tuple[float, float] = (1e-6, 1e-2)
    inner_clip_norm: float = 100.0
    inner_eps_root: float = 1e-8
    head: str = "fresh"
    head_init_std: float | None = None
    calibrate: bool = True
    calibration_method: str = "implicit"
    calibration_steps: int = 100
    grad_norm_penalty: float = 0.0
    harmful_weight: float = 1.0
    outer_lr: float = 1e-5
    outer_batch_size: int = 20
    outer_clip_norm: float = 10.0
    outer_steps: int = 50_000
    eval_every: int = 2500
    val_attacks: int = 4
    estimator: str = "exact"
    truncation: int | None = None
    num_desired: int = 28
    num_harmful: int = 2
    desired_key: str = "profession"
    harmful_key: str = "gender"
    seed: int = 0

    def __post_init__(self) -> None:
        check_values(self)
        if self.variant not in VARIANTS:
            raise ValueError(f"MLACConfig.variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.head not in HEADS:
            raise ValueError(f"MLACConfig.head must be one of {HEADS}, got {self.head!r}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ValueError(
                f"MLACConfig.calibration_method must be one of {CALIBRATION_METHODS}, got {self.calibration_method!r}"
            )
        for name in ("inner_steps", "outer_steps", "eval_every", "outer_batch_size", "val_attacks", "num_desired",
                     "num_harmful", "calibration_steps"):  # fmt: skip
            low = 0 if name == "inner_steps" else 1
            if not isinstance(getattr(self, name), int) or getattr(self, name) < low:
                raise ValueError(f"MLACConfig.{name} must be an int >= {low}, got {getattr(self, name)!r}")
        if self.num_harmful < 2 or self.num_desired < 2:
            raise ValueError("MLACConfig.num_desired and num_harmful must be >= 2 (classification tasks)")
        sizes = tuple(self.inner_batch_sizes)
        if not sizes or any(not isinstance(b, int) or b < 1 for b in sizes):
            raise ValueError(f"MLACConfig.inner_batch_sizes must be positive ints, got {self.inner_batch_sizes!r}")
        low, high = self.inner_lr_bounds
        if not 0 < low <= self.inner_lr <= high:
            raise ValueError(f"MLACConfig.inner_lr {self.inner_lr} must lie in inner_lr_bounds {self.inner_lr_bounds}")
        for name in ("inner_lr_lr", "inner_clip_norm", "inner_eps_root", "outer_lr", "outer_clip_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MLACConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.grad_norm_penalty < 0 or self.harmful_weight < 0:
            raise ValueError("MLACConfig.grad_norm_penalty and harmful_weight must be >= 0")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"MLACConfig.estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if (self.estimator == "truncated") != (self.truncation is not None):
            raise ValueError("MLACConfig.truncation must be set exactly when estimator='truncated'")

    @property
    def num_labels(self) -> int:
        """Outputs of the released head: desired then harmful columns."""
        return self.num_desired + self.num_harmful

    @classmethod
    def paper(cls, **overrides: Any) -> MLACConfig:
        """The official bios experiment: K = 16, calibrated CE, gradient-norm penalty 1.0, fresh head."""
        return cls(**{"grad_norm_penalty": 1.0, **overrides})

    @classmethod
    def ac(cls, **overrides: Any) -> MLACConfig:
        """Adversarial censoring: no inner loop, learned adversary head (gradient reversal), plain negated CE."""
        return cls(**{"inner_steps": 0, "head": "learned", "calibrate": False, "learn_inner_lr": False, **overrides})

    @classmethod
    def desired_only(cls, **overrides: Any) -> MLACConfig:
        """The desired-task-tuned baseline: only the desired CE is trained."""
        return cls(**{"variant": "desired", **overrides})


@dataclass(frozen=True)
class MLACRunSettings:
    """Everything around the method: model, data, the desired-task warm-up, outputs.

    ``model``: ``small-bert`` (a fresh BERT of the sizes below with a word tokenizer built on the training split),
    ``minilm`` (the offline all-MiniLM-L6-v2 checkpoint), ``bert-tiny`` (``google/bert_uncased_L-2_H-128_A-2``,
    Hub) or an HF folder / Hub id. ``warmup_steps`` of desired-task training (Adam ``warmup_lr``) run first; that
    model is saved as ``baseline_desired`` (the desired-task-tuned baseline) and MLAC starts from it.

    Example:
        >>> MLACRunSettings(model="minilm").data
        'synthetic'
    """

    model: str = "small-bert"
    hidden_size: int = 32
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 64
    data: str = "synthetic"
    num_examples: int = 8000
    max_examples: int | None = None
    max_length: int = 48
    data_seed: int = 0
    warmup_steps: int = 0
    warmup_lr: float = 1e-3
    warmup_batch_size: int = 32
    val_examples: int = 200
    fast_compile: bool = False

    def __post_init__(self) -> None:
        check_values(self)
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "num_examples", "max_length",
                     "warmup_batch_size", "val_examples"):  # fmt: skip
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"run.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.max_length < 2:
            raise ValueError(f"run.max_length must be >= 2, got {self.max_length}")
        if self.warmup_steps < 0 or not self.warmup_lr > 0:
            raise ValueError("run.warmup_steps must be >= 0 and run.warmup_lr > 0")
        if self.data not in DATASETS:
            raise ValueError(f"run.data must be one of {DATASETS}, got {self.data!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"run.hidden_size {self.hidden_size} is not divisible by run.num_heads {self.num_heads}")


@dataclass(frozen=True)
class MLACRunConfig:
    """A whole ``jaxtar defend mlac`` run: ``run`` settings and the ``mlac`` hyper-parameters."""

    run: MLACRunSettings = field(default_factory=MLACRunSettings)
    mlac: MLACConfig = field(default_factory=MLACConfig)
    preset: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists)."""
        d = dataclasses.asdict(self)
        return {k: ({f: list(v) if isinstance(v, tuple) else v for f, v in s.items()} if isinstance(s, dict) else s)
                for k, s in d.items()}  # fmt: skip


_SECTIONS = {"run": MLACRunSettings, "mlac": MLACConfig}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The offline demo / test world: a small BERT trained from scratch on the synthetic stand-in (word tokenizer),
    # a desired-task warm-up, then MLAC with a short inner loop. Sizes and learning rates are scaled to it.
    "mlac-offline": {
        "run": {
            "model": "small-bert",
            "hidden_size": 32,
            "num_layers": 2,
            "num_heads": 2,
            "intermediate_size": 64,
            "data": "synthetic",
            "num_examples": 8000,
            "max_length": 48,
            "warmup_steps": 600,
            "warmup_lr": 3e-3,
        },
        "mlac": {
            "inner_steps": 4,
            "inner_batch_sizes": [12, 24, 48],
            "inner_lr": 3e-3,
            "outer_lr": 1e-3,
            "outer_batch_size": 32,
            "outer_steps": 200,
            "eval_every": 50,
            "val_attacks": 2,
            "calibration_steps": 50,
        },
    },  # fmt: skip
    # all-MiniLM-L6-v2 (offline checkpoint, 6 layers, d = 384) on the synthetic stand-in.
    "mlac-minilm": {
        "run": {
            "model": "minilm",
            "data": "synthetic",
            "num_examples": 8000,
            "max_length": 64,
            "warmup_steps": 200,
            "warmup_lr": 5e-5,
        },
        # "mixed" = the exact meta-gradient saving only each inner step's inputs: 7.4 GB for this step (XLA memory
        # analysis) where "exact" needed 25 GB when it stored every residual (not re-measured since it keeps only
        # matmul outputs).
        "mlac": {
            "inner_steps": 4,
            "outer_lr": 2e-5,
            "outer_steps": 500,
            "eval_every": 100,
            "val_attacks": 2,
            "estimator": "mixed",
        },
    },  # fmt: skip
    # The paper's bios experiment (REFERENCE §2): BERT-Tiny, K = 16, calibrated CE, gradient-norm penalty, outer Adam
    # 1e-5 / batch 20 / clip 10, 50k steps. Needs the Hub (model and LabHC/bias_in_bios).
    "mlac-paper": {
        "run": {"model": "bert-tiny", "data": "bias_in_bios", "max_length": 128, "warmup_steps": 0},
        "mlac": {"inner_steps": 16, "grad_norm_penalty": 1.0, "outer_steps": 50_000, "eval_every": 2500},
    },  # fmt: skip
}


def list_mlac_presets() -> list[str]:
    """Names of the shipped MLAC presets.

    Example:
        >>> list_mlac_presets()
        ['mlac-minilm', 'mlac-offline', 'mlac-paper']
    """
    return sorted(PRESETS)


def _raw_preset(preset: str | Path) -> tuple[str, dict[str, Any]]:
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"preset file {str(path)!r} does not exist")
        loaded = load_yaml(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"preset {str(path)!r} must be a mapping of sections")
        return path.stem, loaded
    if str(preset) not in PRESETS:
        hint = difflib.get_close_matches(str(preset), list(PRESETS), n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"unknown MLAC preset {str(preset)!r}; known: {list_mlac_presets()}{extra}")
    return str(preset), PRESETS[str(preset)]


def load_mlac_config(preset: str | Path = "mlac-offline", overrides: Mapping[str, Any] | None = None) -> MLACRunConfig:
    """A preset (name or YAML file with sections ``run`` / ``mlac``) plus dotted overrides (``mlac.outer_steps``).

    Raises:
        ConfigError: unknown preset, section or field, a value of the wrong type or one the dataclass rejects.

    Example:
        >>> load_mlac_config("mlac-paper").mlac.inner_steps
        16
    """
    label, loaded = _raw_preset(preset)
    raw: dict[str, dict[str, Any]] = {}
    for section, values in loaded.items():
        if section not in _SECTIONS:
            raise ConfigError(f"unknown section {section!r} in MLAC preset {label!r}; known: {sorted(_SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"section {section!r} of MLAC preset {label!r} must be a mapping")
        raw[section] = dict(values)
    merge_overrides(raw, _SECTIONS, overrides)
    built = {section: build_section(section, cls, raw.get(section, {})) for section, cls in _SECTIONS.items()}
    return MLACRunConfig(**built, preset=label)


def add_mlac_flags(parser: Any) -> None:
    """``--mlac.FIELD`` and ``--mlac-run.FIELD`` flags (hyphens or underscores) for every field.

    Example:
        >>> import argparse
        >>> p = argparse.ArgumentParser(); add_mlac_flags(p)
        >>> mlac_overrides(p.parse_args(["--mlac.outer-steps", "5", "--mlac-run.warmup-steps", "0"]))
        {'run.warmup_steps': '0', 'mlac.outer_steps': '5'}
    """
    add_section_flags(parser, _SECTIONS, tag="mlac", prefixes={"run": "mlac-run", "mlac": "mlac"},
                      title="MLAC {section} (jaxtar defend mlac only; override the preset)")  # fmt: skip


def mlac_overrides(args: Any) -> dict[str, str]:
    """The ``{"section.field": text}`` overrides given as ``--mlac*`` flags."""
    return section_overrides(args, "mlac")
