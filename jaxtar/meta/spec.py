"""What a meta-gradient computation is asked to do: the estimator and the tamper-loss schedule.

`Estimator` names one of the six estimators of `jaxtar.meta.estimators` (and, for "remat", the `jax.checkpoint`
policy); `TamperSchedule` says after which attack steps the tamper loss is recorded and how the records are
weighted. Both are frozen and validated on construction, so a bad value fails here, not inside a trace.

Example:
    >>> Estimator("remat", two_level=True).differentiates_unroll
    True
    >>> TamperSchedule.mlac().record_steps(3).tolist()
    [0, 1, 2, 3]
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import jax
import numpy as np

from jaxtar.attacks.unroll import ATTACK_GRAD
from jaxtar.config.choices import ESTIMATOR_KINDS

ESTIMATORS = ESTIMATOR_KINDS  # one list, kept where the config (which must not import jax) reads it
WEIGHTINGS = ("exponential", "uniform", "final")
# What to do with an adversary whose meta-gradient is not finite: "zero" replaces it by zeros (a diverged attack
# contributes nothing; `aux.is_finite` is False for it), "keep" returns it as computed.
ON_NONFINITE = ("zero", "keep")
# What `exact` (and `truncated`'s differentiated steps) keep per step: every matmul output without batch dimensions
# (projections, LM head, forward and backward) and the step's inputs; the elementwise intermediates (norms,
# activations, softmax, the optimiser update) are recomputed in the backward pass. Same gradient as storing
# everything, ~0.9x its time and ~0.45-0.55x its memory on CPU (d=64 and d=256 Llamas, K=4-16).
EXACT_POLICY = "dots_with_no_batch_dims_saveable"
_POLICIES = (
    "nothing_saveable",
    "attack_grad_saveable",
    "everything_saveable",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
)


def checkpoint_policy(name: str):
    """A `jax.checkpoint` policy by name; "attack_grad_saveable" keeps each step's attack gradient (one more
    param-sized array per step), so the recomputation skips the weight-gradient matmuls."""
    if name == "attack_grad_saveable":
        return jax.checkpoint_policies.save_only_these_names(ATTACK_GRAD)
    return getattr(jax.checkpoint_policies, name)


@dataclass(frozen=True)
class Estimator:
    """How the meta-gradient is computed (see the module docstring).

    Args:
        kind: one of `ESTIMATORS`.
        remat_policy: a `jax.checkpoint_policies` name for "remat", or "attack_grad_saveable" (keep each step's
            attack gradient: ~7 % fewer FLOPs than "nothing_saveable" for K more param-sized arrays).
        two_level: "remat" only: also checkpoint groups of ~sqrt(K) steps.
        truncation: T for "truncated" (steps differentiated exactly, counted from the end).

    Example:
        >>> Estimator("truncated", truncation=4).kind
        'truncated'
    """

    kind: str = "exact"
    remat_policy: str = "nothing_saveable"
    two_level: bool = False
    truncation: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ESTIMATORS:
            raise ValueError(f"Estimator.kind must be one of {ESTIMATORS}, got {self.kind!r}")
        if self.remat_policy not in _POLICIES:
            raise ValueError(f"Estimator.remat_policy must be one of {_POLICIES}, got {self.remat_policy!r}")
        if self.two_level and self.kind != "remat":
            raise ValueError("Estimator.two_level only applies to kind='remat'")
        if (self.kind == "truncated") != (self.truncation is not None):
            raise ValueError("Estimator.truncation must be set exactly when kind='truncated'")
        if self.truncation is not None and self.truncation < 0:
            raise ValueError(f"Estimator.truncation must be >= 0, got {self.truncation}")

    @property
    def differentiates_unroll(self) -> bool:
        """Whether gradients flow through the attack's optimiser steps (needs eps_root > 0 for Adam)."""
        return self.kind in ("exact", "remat", "mixed") or (self.kind == "truncated" and self.truncation > 0)


@dataclass(frozen=True)
class TamperSchedule:
    """Where the tamper loss is recorded and with which weights.

    Args:
        every: record after every step number j divisible by this (j = 1..K).
        include_initial: also record j = 0 (before any step; MLAC does).
        weighting: "exponential" (w_j = exp(rate * (j - K)), TAR), "uniform" (mean over records, MLAC) or
            "final" (only the last record, weight 1).
        rate: the exponential rate (TAR: 0.0625).

    Example:
        >>> TamperSchedule.tar(every=4).weights(steps=8).round(3).tolist()
        [0.779, 1.0]
    """

    every: int = 1
    include_initial: bool = False
    weighting: str = "exponential"
    rate: float = 0.0625

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"TamperSchedule.every must be >= 1, got {self.every}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"TamperSchedule.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")

    @classmethod
    def tar(cls, every: int = 4, rate: float = 0.0625) -> TamperSchedule:
        """TAR's schedule: every s-th step, exponentially increasing weights."""
        return cls(every=every, weighting="exponential", rate=rate)

    @classmethod
    def mlac(cls) -> TamperSchedule:
        """MLAC's schedule: the mean over k = 0..K."""
        return cls(every=1, include_initial=True, weighting="uniform")

    def record_steps(self, max_steps: int) -> np.ndarray:
        """Step numbers j (0..max_steps) at which the tamper loss is recorded."""
        first = [0] if self.include_initial else []
        return np.array(first + list(range(self.every, max_steps + 1, self.every)), dtype=np.int64)

    def weights(self, steps: int, max_steps: int | None = None) -> np.ndarray:
        """Weights of the records of a `steps`-step attack run in a loop of `max_steps` (zero past `steps`)."""
        j = self.record_steps(steps if max_steps is None else max_steps)
        live = j <= steps
        if not live.any():
            raise ValueError(f"no tamper record within {steps} steps (every={self.every})")
        if self.weighting == "exponential":
            w = np.exp(self.rate * (j - steps))
        elif self.weighting == "uniform":
            w = np.full(j.shape, 1.0 / live.sum())
        else:
            w = (j == j[live].max()).astype(np.float64)
        return np.where(live, w, 0.0)


def warn_if_zeroed(is_finite: jax.Array, on_nonfinite: str, where: str) -> int:
    """Warn when eager (non-traced) results had non-finite meta-gradients that ``on_nonfinite="zero"`` zeroed.

    Args:
        is_finite: `MetaAux.is_finite` (a scalar, or one flag per adversary).
        on_nonfinite: the policy the result was computed under; only "zero" hides anything.
        where: the function to name in the message.

    Returns:
        How many meta-gradients were zeroed (0 under a trace, where nothing can be inspected or said).

    Example:
        >>> import jax.numpy as jnp
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_if_zeroed(jnp.array([True, False, False]), "zero", "f")
        2
        >>> str(caught[0].message)
        "f: 2 of 3 meta-gradients were non-finite (NaN / inf) and were replaced by zeros (on_nonfinite='zero'); ..."
    """
    if on_nonfinite != "zero" or isinstance(is_finite, jax.core.Tracer):
        return 0
    flags = np.asarray(is_finite)
    zeroed = int(flags.size - np.count_nonzero(flags))
    if zeroed:
        warnings.warn(
            f"{where}: {zeroed} of {flags.size} meta-gradients were non-finite (NaN / inf) and were replaced by zeros "
            "(on_nonfinite='zero'); aux.is_finite marks them. Pass on_nonfinite='keep' to see the raw values.",
            RuntimeWarning,
            stacklevel=3,
        )
    return zeroed
