"""Adversary specifications: small frozen dataclasses describing one simulated fine-tuning attack.

An adversary is data, not code: the optimiser kind, its hyper-parameters, the learning-rate schedule, clipping,
step count, batch size, an optional LoRA spec, the data source and a seed. `jaxtar.attacks.optimizers` turns it into
an optax transform and `jaxtar.attacks.unroll` runs it.

Adversaries that share `static_key()` (same optimiser kind, schedule shape, clipping on/off, LoRA spec, ...) can run
as one `vmap` with their numeric hyper-parameters (`hyperparams()`) stacked into arrays.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

import numpy as np

OPTIMIZERS = (
    "sgd",
    "sgd_momentum",
    "sgd_nesterov",
    "adam",
    "adamw",
    "adadelta",
    "schedule_free_adamw",
    "lion",
)
ADAM_FAMILY = ("adam", "adamw", "schedule_free_adamw")
SCHEDULES = ("constant", "linear_warmup", "warmup_cosine", "sgdr")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_SOURCE_RE = re.compile(r"^[a-z][a-z0-9_]*$")

# Numeric hyper-parameters each optimiser kind reads (names follow optax's argument names).
_HYPERPARAMS = {
    "sgd": ("learning_rate", "weight_decay"),
    "sgd_momentum": ("learning_rate", "weight_decay", "momentum"),
    "sgd_nesterov": ("learning_rate", "weight_decay", "momentum"),
    "adam": ("learning_rate", "weight_decay", "b1", "b2", "eps", "eps_root"),
    "adamw": ("learning_rate", "weight_decay", "b1", "b2", "eps", "eps_root"),
    "adadelta": ("learning_rate", "weight_decay", "rho", "eps"),
    "schedule_free_adamw": ("learning_rate", "weight_decay", "b1", "b2", "eps", "eps_root"),
    "lion": ("learning_rate", "weight_decay", "b1", "b2"),
}


@dataclass(frozen=True)
class Schedule:
    """Learning-rate multiplier over attack steps (peak 1.0; the adversary's `lr` scales it).

    Args:
        kind: "constant", "linear_warmup" (0 -> 1 over `warmup_steps`, then flat), "warmup_cosine" (linear warmup,
            then cosine decay to `end_fraction` at `decay_steps`), or "sgdr" (cosine cycles of `cycle_steps`
            restarting at the peak, each with `warmup_steps` of warmup).
        warmup_steps: warmup length in steps.
        decay_steps: total length of warmup + cosine decay; None means "the adversary's step count".
        cycle_steps: SGDR cycle length.
        end_fraction: final multiplier of the cosine decay.

    Example:
        >>> Schedule("warmup_cosine", warmup_steps=100).kind
        'warmup_cosine'
    """

    kind: str = "constant"
    warmup_steps: int = 0
    decay_steps: int | None = None
    cycle_steps: int | None = None
    end_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"Schedule.kind must be one of {SCHEDULES}, got {self.kind!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"Schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.kind == "linear_warmup" and self.warmup_steps == 0:
            raise ValueError("Schedule 'linear_warmup' needs warmup_steps > 0")
        if self.decay_steps is not None and self.decay_steps <= self.warmup_steps:
            raise ValueError(
                f"Schedule.decay_steps ({self.decay_steps}) must exceed warmup_steps ({self.warmup_steps})"
            )
        if self.kind == "sgdr":
            if self.cycle_steps is None or self.cycle_steps <= self.warmup_steps:
                raise ValueError(
                    f"Schedule 'sgdr' needs cycle_steps > warmup_steps ({self.warmup_steps}), got {self.cycle_steps}"
                )
        elif self.cycle_steps is not None:
            raise ValueError(f"Schedule.cycle_steps only applies to 'sgdr', not {self.kind!r}")
        if not 0.0 <= self.end_fraction <= 1.0:
            raise ValueError(f"Schedule.end_fraction must be in [0, 1], got {self.end_fraction}")

    def resolved(self, steps: int) -> Schedule:
        """This schedule with `decay_steps` filled in for a `steps`-long attack (for warmup_cosine)."""
        if self.kind == "warmup_cosine" and self.decay_steps is None:
            if steps <= self.warmup_steps:
                raise ValueError(f"warmup_cosine needs steps ({steps}) > warmup_steps ({self.warmup_steps})")
            return dataclasses.replace(self, decay_steps=steps)
        return self


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA attack: low-rank adapters on `targets` (projection names), the defended weights frozen.

    Example:
        >>> LoraSpec(rank=16, alpha=32.0).scale
        2.0
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoraSpec.rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"LoraSpec.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraSpec.dropout must be in [0, 1), got {self.dropout}")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError(f"LoraSpec.targets must be non-empty projection names, got {self.targets}")

    @property
    def scale(self) -> float:
        """The LoRA output scale alpha / rank."""
        return self.alpha / self.rank

    def to_config(self):
        """The equivalent `jaxtar.models.LoraConfig`."""
        from jaxtar.models.lora import LoraConfig

        return LoraConfig(rank=self.rank, alpha=self.alpha, dropout=self.dropout, targets=self.targets)


@dataclass(frozen=True)
class Adversary:
    """One simulated fine-tuning attack.

    Args:
        optimizer: one of `OPTIMIZERS`, each built from optax's own transforms (`jaxtar.attacks.optimizers`);
            beside `lr` and `weight_decay` each kind reads:

            - "sgd": nothing more (``optax.sgd``);
            - "sgd_momentum": `momentum` (``optax.sgd(momentum=)``, heavy ball);
            - "sgd_nesterov": `momentum` (``optax.sgd(momentum=, nesterov=True)``);
            - "adam": `b1`, `b2`, `eps`, `eps_root` (``optax.adam``);
            - "adamw": `b1`, `b2`, `eps`, `eps_root` (``optax.adamw``);
            - "adadelta": `rho`, `eps` (``optax.adadelta``);
            - "schedule_free_adamw": `b1`, `b2`, `eps`, `eps_root` (``optax.contrib.schedule_free`` around a
              momentum-free Adam; the attacked weights are its averaged iterate);
            - "lion": `b1`, `b2` (``optax.lion``).
        lr: peak learning rate.
        weight_decay: decoupled for adamw / schedule_free_adamw / lion, L2 (added to the gradient) otherwise.
        b1, b2, eps: Adam-family / Lion moments and epsilon (Adadelta uses `eps` too).
        eps_root: epsilon inside the square root of Adam-family optimisers; must be > 0 whenever the attack is
            differentiated through (sqrt has an infinite derivative at 0). The default 1e-16 changes no update
            whose squared gradient exceeds ~1e-16.
        momentum: SGD momentum (sgd_momentum / sgd_nesterov).
        rho: Adadelta decay.
        schedule: learning-rate schedule.
        clip_norm: global-norm gradient clipping, None for none.
        steps: number of optimiser steps (the schedule's length); the attack batches given to
            `meta_value_and_grad` must have exactly this many entries along their leading axis, those given to
            `unroll` at most this many (a prefix of the attack); anything else is refused (`check_steps`).
        batch_size: sequences per step (used by the data pipeline, not by the unroll).
        lora: a LoRA spec, or None for a full-parameter attack.
        data: data source name ("forget", "retain", "ood", ...); "<a>_to_<b>" switches from a to b.
        switch_step: first step drawing from <b> for a switching source; None means "sample per outer step"
            (`sample_switch_step`).
        seed: seed of the adversary's own randomness (LoRA init, dropout, head init).
        name: a label for reports.

    Example:
        >>> adv = Adversary("adamw", lr=2e-5, weight_decay=0.01, steps=64)
        >>> adv.hyperparams()["learning_rate"]
        2e-05
    """

    optimizer: str = "adamw"
    lr: float = 2e-5
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    eps_root: float = 1e-16
    momentum: float = 0.9
    rho: float = 0.9
    schedule: Schedule = field(default_factory=Schedule)
    clip_norm: float | None = None
    steps: int = 64
    batch_size: int = 32
    lora: LoraSpec | None = None
    data: str = "forget"
    switch_step: int | None = None
    seed: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Adversary.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for f in dataclasses.fields(self):  # inf / NaN hyper-parameters can only diverge
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"Adversary.{f.name} must be a finite number, got {value}")
        if not self.lr > 0:
            raise ValueError(f"Adversary.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"Adversary.weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("b1", "b2", "momentum", "rho"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"Adversary.{name} must be in [0, 1), got {value}")
        if self.optimizer == "schedule_free_adamw" and self.b1 == 0.0:
            raise ValueError("schedule_free_adamw needs b1 > 0 (it interpolates with weight b1)")
        if self.eps < 0 or self.eps_root < 0:
            raise ValueError(f"Adversary.eps/eps_root must be >= 0, got {self.eps}/{self.eps_root}")
        if self.optimizer == "adadelta" and self.eps == 0:
            raise ValueError("adadelta needs eps > 0")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"Adversary.clip_norm must be > 0 or None, got {self.clip_norm}")
        if self.steps < 1:
            raise ValueError(f"Adversary.steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"Adversary.batch_size must be >= 1, got {self.batch_size}")
        if not isinstance(self.schedule, Schedule):
            raise TypeError(f"Adversary.schedule must be a Schedule, got {type(self.schedule).__name__}")
        self.schedule.resolved(self.steps)  # validates warmup vs steps
        if self.lora is not None and not isinstance(self.lora, LoraSpec):
            raise TypeError(f"Adversary.lora must be a LoraSpec or None, got {type(self.lora).__name__}")
        if not _SOURCE_RE.match(self.data) or self.data.startswith("to_") or self.data.endswith("_to"):
            raise ValueError(f"Adversary.data must be a lower_snake_case source name, got {self.data!r}")
        if self.switch_step is not None:
            if not self.switches:
                raise ValueError(f"switch_step only applies to '<a>_to_<b>' sources, not {self.data!r}")
            if not 0 <= self.switch_step <= self.steps:
                raise ValueError(f"switch_step must be in [0, steps={self.steps}], got {self.switch_step}")

    @property
    def switches(self) -> bool:
        """Whether the data source switches mid-attack ("retain_to_forget")."""
        return "_to_" in self.data

    @property
    def sources(self) -> tuple[str, str]:
        """(before, after) source names; both equal for a non-switching source."""
        if self.switches:
            before, after = self.data.split("_to_", 1)
            return before, after
        return self.data, self.data

    def hyperparams(self) -> dict[str, float]:
        """The numeric hyper-parameters this optimiser kind reads (vmappable / differentiable inputs)."""
        values = {
            "learning_rate": self.lr,
            "weight_decay": self.weight_decay,
            "b1": self.b1,
            "b2": self.b2,
            "eps": self.eps,
            "eps_root": self.eps_root,
            "momentum": self.momentum,
            "rho": self.rho,
        }
        out = {k: float(values[k]) for k in _HYPERPARAMS[self.optimizer]}
        if self.clip_norm is not None:
            out["clip_norm"] = float(self.clip_norm)
        return out

    def static_key(self) -> tuple:
        """What must be equal for two adversaries to share one compiled, vmapped unroll."""
        return (self.optimizer, self.schedule.resolved(self.steps), self.clip_norm is not None, self.lora)

    def step_sources(self, switch_step: int | None = None) -> tuple[str, ...]:
        """The data source each step draws from.

        Example:
            >>> Adversary(data="retain_to_forget", steps=4, switch_step=1).step_sources()
            ('retain', 'forget', 'forget', 'forget')
        """
        before, after = self.sources
        m = self.switch_step if switch_step is None else switch_step
        if self.switches and m is None:
            raise ValueError(f"{self.data!r} needs a switch step: set switch_step or pass one")
        m = self.steps if m is None else m
        return tuple(before if k < m else after for k in range(self.steps))


def check_steps(
    adversary: Adversary, num_steps: int, *, prefix: bool = False, what: str = "the attack batches"
) -> None:
    """Refuse running ``adversary`` for a number of steps other than its own ``steps``.

    The step count is read from the batches' leading axis; a silent mismatch would run a different attack than the
    adversary describes (its schedule length is ``steps``). With ``prefix`` fewer steps are allowed: the first
    ``num_steps`` steps of the adversary's attack, its schedule unchanged (`unroll` runs prefixes).

    Example:
        >>> check_steps(Adversary(steps=4), 8)
        Traceback (most recent call last):
        ValueError: the attack batches have 8 steps (their leading axis) but the adversary runs steps=4: ...
    """
    if int(num_steps) > adversary.steps or (not prefix and int(num_steps) != adversary.steps):
        raise ValueError(
            f"{what} have {num_steps} steps (their leading axis) but the adversary runs steps={adversary.steps}: "
            f"make them agree (batches[:{adversary.steps}], or dataclasses.replace(adversary, steps={num_steps}))"
        )


def sample_switch_step(rng: np.random.Generator, steps: int, a: float = 6.0, b: float = 3.0) -> int:
    """TAR's retain->forget switch point: int(Beta(a, b) * steps).

    Example:
        >>> 0 <= sample_switch_step(np.random.default_rng(0), 64) <= 64
        True
    """
    return int(rng.beta(a, b) * steps)


def with_seeds(adversaries: tuple[Adversary, ...], seeds: tuple[int, ...]) -> tuple[Adversary, ...]:
    """Every adversary repeated once per seed (red-team suites run 3 seeds each)."""
    return tuple(dataclasses.replace(a, seed=s) for a in adversaries for s in seeds)
