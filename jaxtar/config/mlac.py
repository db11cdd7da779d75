"""MLAC runs: the method's hyper-parameters (`MLACConfig`), the settings around it and a whole run (`MLACRunConfig`).

Kept free of JAX imports so the CLI can build its flags cheaply. Presets are YAML files in ``jaxtar/configs/mlac/``
(``mlac-offline``: a small BERT with a word tokenizer on the offline synthetic Bias in Bios stand-in; ``mlac-minilm``:
the offline all-MiniLM-L6-v2 checkpoint on the same data; ``mlac-paper``: BERT-Tiny on ``LabHC/bias_in_bios`` with
the paper's hyper-parameters, its headline arm (no gradient-norm penalty), which needs the Hub;
``mlac-paper-gradpenalty``: the same with the penalty ablation's arm; ``mlac-official``: ``mlac-paper`` run the way
the released code computes it, ``mlac.parity: official``, max length 200) or any YAML file with the sections
``mlac_run`` (model, data, warm-up), ``mlac`` and ``run`` (the run folder, checkpoints, resume, mesh: the same
`RunConfig` as every defence); they are read by the same `jaxtar.config.sections.load_preset` as the TAR presets.

Example:
    >>> cfg = load_mlac_config("mlac-offline", {"mlac.outer_steps": 3, "run.checkpoint_every": 10})
    >>> cfg.mlac.outer_steps, cfg.mlac_run.model, cfg.run.checkpoint_every
    (3, 'small-bert', 10)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxtar.config.choices import CALIBRATION_METHODS, ESTIMATOR_KINDS
from jaxtar.config.defence import RunConfig
from jaxtar.config.sections import (
    PresetFolder,
    add_section_flags,
    check_sections,
    check_values,
    load_preset,
    one_of,
    plain,
    section_overrides,
    sections_of,
)
from jaxtar.errors import ConfigError

MLAC_PRESETS = PresetFolder(Path(__file__).parent.parent / "configs" / "mlac", kind="MLAC preset")
VARIANTS = ("mlac", "desired", "joint")
HEADS = ("fresh", "learned")
PARITIES = ("jaxtar", "official")
# The per-item switches `MLACConfig.parity` sets (None = follow parity): {field: (jaxtar's value, official value)}.
PARITY_SWITCHES: dict[str, tuple[str, str]] = {
    "inner_lr_objective": ("defence", "harmful_ce"),
    "inner_clip": ("through", "detached"),
    "grad_norm_batches": ("outer", "inner"),
    "head_init": ("normal", "torch"),
}
MODELS = ("small-bert", "minilm", "bert-tiny")
DATASETS = ("synthetic", "bias_in_bios")


@dataclass(frozen=True)
class MLACConfig:
    """Hyper-parameters of an MLAC / AC / desired-task run (defaults: the paper's bios setting).

    ``parity`` ("jaxtar" or "official", the released code's way) sets four switches at once; each can be set on its
    own (None = follow ``parity``; `setting` gives the value in force). docs/mlac.md "Differences from the official
    code" has one line per switch:

    - ``inner_lr_objective``: "defence" (the learned inner lr *ascends* the defence loss: the calibrated harmful CE
      it lowers, with any gradient-norm penalty) or "harmful_ce" (it *descends* the mean uncalibrated harmful CE of
      the attacker over k = 0..K on the outer batch, its gradient clipped to norm ``outer_clip_norm``);
    - ``inner_clip``: "through" (the inner gradient is clipped to ``inner_clip_norm`` with the derivative taken
      through the norm) or "detached" (scaled by ``inner_clip_norm / norm`` with the norm a constant);
    - ``grad_norm_batches``: "outer" (the penalty averages the attacker's gradient norm on the outer batch at each
      k = 0..K) or "inner" (the norms of the K inner steps' gradients on their own batches, plus the outer batch's
      at k = K);
    - ``head_init``: "normal" (std ``head_init_std``, default the model's initializer_range, 0.02) or "torch"
      (torch's ``nn.Linear`` default: U(-1/sqrt(hidden), 1/sqrt(hidden))), for the attacker's fresh head and the
      released head ``prepare_model`` creates.

    Args:
        variant: mlac (the defence), desired (only the desired-task CE: the tuned baseline) or joint (trained on
            both tasks: the leaky baseline).
        inner_steps: K, the simulated attacker's Adam steps per outer step (0: adversarial censoring, no inner loop).
        inner_batch_sizes: the attacker's batch size is drawn from these every outer step.
        inner_lr: the attacker's starting learning rate (learned when learn_inner_lr).
        learn_inner_lr: learn the attacker's learning rate as the paper does (it is made stronger each step).
        inner_lr_lr: Adam learning rate of the learned inner learning rate.
        inner_lr_bounds: the learned inner learning rate is clamped to [low, high].
        inner_clip_norm: the attacker's gradients are clipped to this global norm.
        inner_eps_root: Adam's eps inside the square root (> 0 keeps its derivative finite).
        head: fresh (a new random attacker head every outer step, as the official code does for BERT) or learned
            (the released head's harmful columns are the attacker's starting head).
        head_init_std: std of a fresh head under head_init normal (null = the model's initializer_range).
        calibrate: score the attacker by the calibrated harmful CE (its best constant-shift fit), as the paper does.
        calibration_method: how that calibration is solved: implicit (implicit function theorem), unrolled or
            envelope.
        calibration_steps: iterations of the calibration solve.
        grad_norm_penalty: weight of the attacker's gradient-norm penalty (0 = off; the paper's ablation uses 1).
        harmful_weight: weight of the harmful term in the defence loss.
        outer_lr: Adam learning rate of the released model.
        outer_batch_size: examples per outer batch.
        outer_clip_norm: the released model's gradient is clipped to this global norm.
        outer_steps: outer (defence) steps.
        eval_every: validate (and keep the best model) every this many outer steps.
        val_attacks: simulated attacks per validation (their mean picks the best checkpoint).
        estimator: the meta-gradient estimator through the attack (exact, remat, mixed, truncated, first_order, tar).
        truncation: steps differentiated by the truncated estimator (null = all).
        num_desired: classes of the desired task (professions: 28).
        num_harmful: classes of the harmful task (gender: 2).
        desired_key: the dataset column of the desired labels.
        harmful_key: the dataset column of the harmful labels.
        seed: seed of the outer loop's batches, attacker heads and attacks.
        compute_dtype: activation dtype of the encoder (bfloat16 = mixed precision: float32 master weights,
            optimiser state and logits; null = the weights' float32).
        parity: jaxtar or official: sets the four switches below (docs/mlac.md lists each difference).
        inner_lr_objective: defence or harmful_ce (null = follow parity); see above.
        inner_clip: through or detached (null = follow parity); see above.
        grad_norm_batches: outer or inner (null = follow parity); see above.
        head_init: normal or torch (null = follow parity); see above.

    Example:
        >>> MLACConfig.ac().inner_steps, MLACConfig.paper().grad_norm_penalty
        (0, 0.0)
        >>> MLACConfig.official().setting("inner_clip"), MLACConfig(parity="official", inner_clip="through").setting(
        ...     "inner_clip")
        ('detached', 'through')
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
    compute_dtype: str | None = None
    parity: str = "jaxtar"
    inner_lr_objective: str | None = None
    inner_clip: str | None = None
    grad_norm_batches: str | None = None
    head_init: str | None = None

    def __post_init__(self) -> None:
        check_values(self)
        one_of(self, "variant", VARIANTS)
        one_of(self, "head", HEADS)
        one_of(self, "parity", PARITIES)
        for name, choices in PARITY_SWITCHES.items():
            one_of(self, name, choices, optional=True)
        one_of(self, "calibration_method", CALIBRATION_METHODS)
        one_of(self, "compute_dtype", ("float32", "bfloat16"), optional=True)
        for name in ("inner_steps", "outer_steps", "eval_every", "outer_batch_size", "val_attacks", "num_desired",
                     "num_harmful", "calibration_steps"):  # fmt: skip
            low = 0 if name == "inner_steps" else 1
            if not isinstance(getattr(self, name), int) or getattr(self, name) < low:
                raise ConfigError(f"MLACConfig.{name} must be an int >= {low}, got {getattr(self, name)!r}")
        if self.num_harmful < 2 or self.num_desired < 2:
            raise ConfigError("MLACConfig.num_desired and num_harmful must be >= 2 (classification tasks)")
        sizes = tuple(self.inner_batch_sizes)
        if not sizes or any(not isinstance(b, int) or b < 1 for b in sizes):
            raise ConfigError(f"MLACConfig.inner_batch_sizes must be positive ints, got {self.inner_batch_sizes!r}")
        low, high = self.inner_lr_bounds
        if not 0 < low <= self.inner_lr <= high:
            raise ConfigError(f"MLACConfig.inner_lr {self.inner_lr} must lie in inner_lr_bounds {self.inner_lr_bounds}")
        for name in ("inner_lr_lr", "inner_clip_norm", "inner_eps_root", "outer_lr", "outer_clip_norm"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"MLACConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.grad_norm_penalty < 0 or self.harmful_weight < 0:
            raise ConfigError("MLACConfig.grad_norm_penalty and harmful_weight must be >= 0")
        one_of(self, "estimator", ESTIMATOR_KINDS)
        if (self.estimator == "truncated") != (self.truncation is not None):
            raise ConfigError("MLACConfig.truncation must be set exactly when estimator='truncated'")
        if self.setting("head_init") == "torch" and self.head_init_std is not None:
            raise ConfigError("MLACConfig.head_init_std only applies to head_init 'normal' (the 'torch' init has none)")
        if self.inner_norm_penalty and self.estimator not in ("exact", "remat", "mixed"):
            raise ConfigError(
                f"MLACConfig.grad_norm_batches 'inner' (the penalty on the inner steps' own gradients) needs an exact "
                f"estimator (exact, remat or mixed), got estimator={self.estimator!r}"
            )

    @property
    def inner_norm_penalty(self) -> bool:
        """Whether the gradient-norm penalty reads the inner steps' gradients (``grad_norm_batches`` "inner")."""
        return self.grad_norm_penalty > 0 and self.inner_steps > 0 and self.setting("grad_norm_batches") == "inner"

    def setting(self, name: str) -> str:
        """The value in force of a parity switch (`PARITY_SWITCHES`): its own field, else ``parity``'s choice."""
        value = getattr(self, name)
        if value is not None:
            return value
        return PARITY_SWITCHES[name][PARITIES.index(self.parity)]

    @property
    def num_labels(self) -> int:
        """Outputs of the released head: desired then harmful columns."""
        return self.num_desired + self.num_harmful

    @classmethod
    def paper(cls, **overrides: Any) -> MLACConfig:
        """The paper's headline bios arm: K = 16, calibrated CE, no gradient-norm penalty, fresh head (the defaults;
        the penalty ablation's arm is ``paper(grad_norm_penalty=1.0)``)."""
        return cls(**overrides)

    @classmethod
    def official(cls, **overrides: Any) -> MLACConfig:
        """The paper's headline arm computed the way the released code computes it (``parity="official"``)."""
        return cls(**{"parity": "official", **overrides})

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
    model is saved as ``baseline/`` (the desired-task-tuned baseline) and MLAC starts from it.

    Args:
        model: small-bert, minilm, bert-tiny, or an HF folder / Hub id (see above).
        hidden_size, num_layers, num_heads, intermediate_size: the sizes of a fresh small-bert.
        data: synthetic (the offline Bias-in-Bios stand-in) or bias_in_bios (the Hub dataset).
        num_examples: synthetic bios generated.
        max_examples: keep at most this many bios per split (null = all).
        max_length: tokens per bio.
        data_seed: seed of the synthetic data and the splits.
        warmup_steps: desired-task training steps before MLAC (saved as baseline/).
        warmup_lr: Adam learning rate of that warm-up.
        warmup_batch_size: examples per warm-up step.
        val_examples: validation examples scored at each validation.
        fast_compile: XLA -O0 style options: faster compiles, slower steps.

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
                raise ConfigError(f"mlac_run.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.max_length < 2:
            raise ConfigError(f"mlac_run.max_length must be >= 2, got {self.max_length}")
        if self.warmup_steps < 0 or not self.warmup_lr > 0:
            raise ConfigError("mlac_run.warmup_steps must be >= 0 and mlac_run.warmup_lr > 0")
        if self.data not in DATASETS:
            raise ConfigError(f"mlac_run.data must be one of {DATASETS}, got {self.data!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"mlac_run.hidden_size {self.hidden_size} is not divisible by mlac_run.num_heads {self.num_heads}"
            )


@dataclass(frozen=True)
class MLACRunConfig:
    """A whole ``jaxtar defend mlac`` run: the ``mlac_run`` settings (model, data, warm-up), the ``mlac``
    hyper-parameters and the ``run`` section every defence shares (folder, checkpoints, resume, mesh, logs)."""

    mlac_run: MLACRunSettings = field(default_factory=MLACRunSettings)
    mlac: MLACConfig = field(default_factory=MLACConfig)
    run: RunConfig = field(default_factory=RunConfig)
    preset: str = ""

    def __post_init__(self) -> None:
        check_sections(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists)."""
        return plain(self)

    def identity(self, method: str = "mlac") -> dict[str, Any]:
        """What a resumed run must match: the settings and hyper-parameters except the step count (a finished run
        can be extended) and ``fast_compile`` (compiler options change no number that matters).

        Example:
            >>> "outer_steps" in MLACRunConfig().identity()["mlac"]
            False
        """
        d = self.to_dict()
        d["mlac"].pop("outer_steps")
        d["mlac_run"].pop("fast_compile")
        for name in ("parity", *PARITY_SWITCHES):  # at their defaults: the identity runs had before these fields
            if d["mlac"][name] == getattr(MLACConfig, name):
                d["mlac"].pop(name)
        return {"method": method, "mlac_run": d["mlac_run"], "mlac": d["mlac"], "seed": self.run.seed}


MLAC_SECTIONS: dict[str, type] = sections_of(MLACRunConfig)


def list_mlac_presets() -> list[str]:
    """Names of the shipped MLAC presets.

    Example:
        >>> list_mlac_presets()
        ['mlac-minilm', 'mlac-official', 'mlac-offline', 'mlac-paper', 'mlac-paper-gradpenalty']
    """
    return MLAC_PRESETS.names()


def load_mlac_config(
    preset: str | Path | None = "mlac-offline", overrides: Mapping[str, Any] | None = None
) -> MLACRunConfig:
    """A preset (name or YAML file with sections ``mlac_run`` / ``mlac`` / ``run``; None = the dataclass defaults)
    plus dotted overrides (``mlac.outer_steps``).

    Raises:
        ConfigError: unknown preset, section or field, a value of the wrong type or one the dataclass rejects.

    Example:
        >>> load_mlac_config("mlac-paper").mlac.inner_steps
        16
    """
    label, sections = load_preset(preset, MLAC_SECTIONS, overrides, presets=MLAC_PRESETS)
    return MLACRunConfig(**sections, preset=label)


def add_mlac_flags(parser: Any) -> None:
    """``--mlac.FIELD`` and ``--mlac-run.FIELD`` flags (hyphens or underscores) for every field (the ``--run.*``
    flags are every defence's, added by `add_config_flags`).

    Example:
        >>> import argparse
        >>> p = argparse.ArgumentParser(); add_mlac_flags(p)
        >>> mlac_overrides(p.parse_args(["--mlac.outer-steps", "5", "--mlac-run.warmup-steps", "0"]))
        {'mlac_run.warmup_steps': '0', 'mlac.outer_steps': '5'}
    """
    own = {name: cls for name, cls in MLAC_SECTIONS.items() if name != "run"}
    add_section_flags(parser, own, tag="mlac", prefixes={"mlac_run": "mlac-run", "mlac": "mlac"},
                      title="MLAC {section} (jaxtar defend mlac only; override the preset)")  # fmt: skip


def mlac_overrides(args: Any) -> dict[str, str]:
    """The ``{"section.field": text}`` overrides given as ``--mlac*`` flags."""
    return section_overrides(args, "mlac")
