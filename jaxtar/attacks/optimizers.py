"""Adversary -> optax: the attack optimiser as pure init / step functions with array hyper-parameters.

Every optimiser is assembled from optax's own transforms and wrapped in `optax.inject_hyperparams`, so its numeric
hyper-parameters live in the optimiser state as arrays. `AttackOptimizer.step` writes the current values (the
scheduled learning rate `lr * multiplier(step)` and the rest of `hp`) into that state before each update, which
makes the hyper-parameters explicit inputs: they can be batched by `vmap` and differentiated (MLAC learns its
attacker's learning rate).

One piece is ours: optax's `clip_by_global_norm` has a NaN derivative at an all-zero gradient (the norm's sqrt), so
clipping uses `_safe_clip_by_global_norm`, which computes the same value with a finite derivative everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxtar.attacks.adversary import Adversary, Schedule, check_steps

PyTree = Any


def lr_multiplier(schedule: Schedule, steps: int) -> Callable[[jax.Array], jax.Array]:
    """The schedule as an optax schedule with peak 1.0 (multiply by the adversary's lr).

    Example:
        >>> f = lr_multiplier(Schedule("linear_warmup", warmup_steps=4), steps=8)
        >>> float(f(2))
        0.5
    """
    s = schedule.resolved(steps)
    if s.kind == "constant":
        return optax.constant_schedule(1.0)
    if s.kind == "linear_warmup":
        return optax.linear_schedule(0.0, 1.0, s.warmup_steps)
    if s.kind == "warmup_cosine":
        return _warmup_cosine(s.warmup_steps, s.decay_steps, s.end_fraction)
    cycles = math.ceil(steps / s.cycle_steps)
    boundaries = [s.cycle_steps * i for i in range(1, cycles)]
    pieces = [_warmup_cosine(s.warmup_steps, s.cycle_steps, s.end_fraction)] * cycles
    return optax.join_schedules(pieces, boundaries)


def _warmup_cosine(warmup: int, total: int, end: float) -> Callable[[jax.Array], jax.Array]:
    if warmup == 0:
        return optax.cosine_decay_schedule(1.0, total, alpha=end)
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, total, end_value=end)


def _safe_clip_by_global_norm(max_norm: jax.Array) -> optax.GradientTransformation:
    """optax.clip_by_global_norm with a finite derivative at zero gradients."""

    def update_fn(updates, state, params=None):
        del params
        sq = sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(updates))
        positive = sq > 0
        norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
        scale = jnp.where(norm < max_norm, 1.0, max_norm / jnp.where(norm < max_norm, 1.0, norm))
        return jax.tree.map(lambda t: t * scale.astype(t.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _with_clip(tx: optax.GradientTransformation, clip_norm: jax.Array | None) -> optax.GradientTransformation:
    return tx if clip_norm is None else optax.chain(_safe_clip_by_global_norm(clip_norm), tx)


def _sgd(learning_rate, weight_decay, clip_norm=None):
    return _with_clip(optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate)), clip_norm)


def _sgd_momentum(learning_rate, weight_decay, momentum, clip_norm=None):
    tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum))
    return _with_clip(tx, clip_norm)


def _sgd_nesterov(learning_rate, weight_decay, momentum, clip_norm=None):
    tx = optax.sgd(learning_rate, momentum, nesterov=True)
    return _with_clip(optax.chain(optax.add_decayed_weights(weight_decay), tx), clip_norm)


def _adam(learning_rate, weight_decay, b1, b2, eps, eps_root, clip_norm=None):
    tx = optax.adam(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root)
    return _with_clip(optax.chain(optax.add_decayed_weights(weight_decay), tx), clip_norm)


def _adamw(learning_rate, weight_decay, b1, b2, eps, eps_root, clip_norm=None):
    tx = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root, weight_decay=weight_decay)
    return _with_clip(tx, clip_norm)


def _adadelta(learning_rate, weight_decay, rho, eps, clip_norm=None):
    return _with_clip(optax.adadelta(learning_rate, rho=rho, eps=eps, weight_decay=weight_decay), clip_norm)


def _lion(learning_rate, weight_decay, b1, b2, clip_norm=None):
    return _with_clip(optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay), clip_norm)


def _schedule_free_adamw(learning_rate, weight_decay, b1, b2, eps, eps_root, clip_norm=None):
    # optax.contrib.schedule_free_adamw minus its sqrt(nu)+eps base (infinite derivative at nu = 0): the same
    # momentum-free Adam built from scale_by_adam(b1=0, eps_root=...), wrapped by optax's schedule_free.
    base = optax.chain(
        optax.scale_by_adam(b1=0.0, b2=b2, eps=eps, eps_root=eps_root),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )
    return _with_clip(optax.contrib.schedule_free(base, learning_rate=learning_rate, b1=b1), clip_norm)


_FACTORIES = {
    "sgd": _sgd,
    "sgd_momentum": _sgd_momentum,
    "sgd_nesterov": _sgd_nesterov,
    "adam": _adam,
    "adamw": _adamw,
    "adadelta": _adadelta,
    "schedule_free_adamw": _schedule_free_adamw,
    "lion": _lion,
}


class AttackOptimizer:
    """An adversary's optimiser as pure functions of (params, state, step, hp).

    Example:
        >>> opt = make_optimizer(Adversary("sgd", lr=0.1, steps=2))
        >>> hp = opt.default_hyperparams()
        >>> p = {"w": jnp.ones(2)}
        >>> s = opt.init(p, hp)
        >>> p, s = opt.step({"w": jnp.ones(2)}, s, p, 0, hp)
        >>> [round(w, 4) for w in p["w"].tolist()]
        [0.9, 0.9]
    """

    def __init__(self, adversary: Adversary, steps: int | None = None) -> None:
        if steps is not None:
            check_steps(adversary, steps)
        self.adversary = adversary
        self.kind = adversary.optimizer
        self.steps = adversary.steps
        self.multiplier = lr_multiplier(adversary.schedule, self.steps)
        self._names = tuple(adversary.hyperparams())
        self._inject = optax.inject_hyperparams(_FACTORIES[self.kind])

    def default_hyperparams(self) -> dict[str, jax.Array]:
        """The adversary's hyper-parameters as scalars of the default float dtype."""
        return {k: jnp.asarray(v, jnp.result_type(float)) for k, v in self.adversary.hyperparams().items()}

    def _check(self, hp: Mapping[str, jax.Array]) -> None:
        if tuple(sorted(hp)) != tuple(sorted(self._names)):
            raise ValueError(f"{self.kind} hyper-parameters must be exactly {sorted(self._names)}, got {sorted(hp)}")

    def init(self, params: PyTree, hp: Mapping[str, jax.Array]) -> PyTree:
        """A fresh optimiser state for `params`."""
        self._check(hp)
        return self._inject(**hp).init(params)

    def step(
        self, grads: PyTree, state: PyTree, params: PyTree, step: jax.Array, hp: Mapping[str, jax.Array]
    ) -> tuple[PyTree, PyTree]:
        """One update at (0-based) `step`; returns (new params, new state)."""
        self._check(hp)
        values = dict(hp)
        values["learning_rate"] = hp["learning_rate"] * self.multiplier(step)
        state = state._replace(hyperparams={**state.hyperparams, **values})
        updates, state = self._inject(**hp).update(grads, state, params)
        return optax.apply_updates(params, updates), state

    def eval_params(self, state: PyTree, params: PyTree) -> PyTree:
        """The weights to evaluate: the averaged x-sequence for schedule-free, `params` otherwise."""
        if self.kind != "schedule_free_adamw":
            return params
        sf_state = _find_schedule_free_state(state)
        return optax.contrib.schedule_free_eval_params(sf_state, params)


def _find_schedule_free_state(state: PyTree) -> optax.contrib.ScheduleFreeState:
    if isinstance(state, optax.contrib.ScheduleFreeState):
        return state
    children = state if isinstance(state, tuple) else ()
    if hasattr(state, "inner_state"):
        children = (state.inner_state,)
    for child in children:
        found = _find_schedule_free_state(child)
        if found is not None:
            return found
    return None


def make_optimizer(adversary: Adversary, steps: int | None = None) -> AttackOptimizer:
    """The optimiser of `adversary` (its static structure; pass hyper-parameter values to init/step).

    Args:
        adversary: the adversary spec (its `steps` is the schedule length; a vmapped group passes its reference,
            stretched to the group's longest attack).
        steps: the number of steps the caller will run (its batches' leading axis), checked against
            `adversary.steps`: a mismatch raises ValueError (`jaxtar.attacks.check_steps`) instead of silently
            running a schedule of another length.
    """
    return AttackOptimizer(adversary, steps)
