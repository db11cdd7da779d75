"""MLAC's simulated attacker: its optimiser (Adam, with the official code's clipping by a detached norm and the
gradient-norm tracking of its penalty behind `jaxtar.config.MLACConfig`'s parity switches), its batches, the engine's
meta-gradient through it, and the official objective of the learned inner learning rate.

Example:
    >>> float(clip_scalar(jnp.float32(-40.0), 10.0))
    -10.0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxtar.attacks import Adversary, AttackProblem
from jaxtar.attacks.optimizers import make_optimizer
from jaxtar.attacks.unroll import Carry, make_step
from jaxtar.config import MLACConfig
from jaxtar.meta import Estimator, TamperSchedule, meta_value_and_grad
from jaxtar.meta.estimators import make_setup, meta_core

Arrays = dict[str, jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(accumulation_dtype(logits)), labels)
    if weights is None:
        return jnp.mean(nll)
    return jnp.sum(weights * nll) / jnp.maximum(jnp.sum(weights), 1.0)


def accumulation_dtype(x: jax.Array) -> Any:
    """float32 accumulation for low-precision params, float64 kept (finite-difference tests)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def inner_adversary(cfg: MLACConfig) -> Adversary:
    """The simulated attacker's optimiser: Adam(0.9, 0.999, 1e-8, eps_root) with global-norm clipping."""
    return Adversary("adam", lr=cfg.inner_lr, eps_root=cfg.inner_eps_root, clip_norm=cfg.inner_clip_norm,
                     steps=max(cfg.inner_steps, 1), batch_size=max(cfg.inner_batch_sizes), data="attacker",
                     name="mlac-inner")  # fmt: skip


def official_norm(grads: Any) -> jax.Array:
    """The official inner gradient norm ``sqrt(1e-8 + sum g^2)`` (adapt.py ``get_clip_grads_fn``)."""
    return jnp.sqrt(1e-8 + sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(grads)))


class InnerOptimizer:
    """The engine's attack optimiser (`jaxtar.attacks.optimizers.AttackOptimizer`) around the official code's two
    inner-step pieces: clipping by a detached norm (``detached``: ``g * clip / stop_gradient(||g||)`` when
    ``||g|| > clip``; the base optimiser then clips nothing) and, with ``track``, the state ``(base state, ||g||,
    steps taken)`` whose last two entries `eval_params` hands to the tamper loss with the weights."""

    def __init__(self, base: Any, *, clip: float | None, track: bool) -> None:
        self.base, self.clip, self.track = base, clip, track

    def default_hyperparams(self) -> dict[str, jax.Array]:
        return self.base.default_hyperparams()

    def init(self, params: Any, hp: Any) -> Any:
        state = self.base.init(params, hp)
        if not self.track:
            return state
        return state, jnp.zeros((), accumulation_dtype(jax.tree.leaves(params)[0])), jnp.zeros((), jnp.int32)

    def step(self, grads: Any, state: Any, params: Any, step: jax.Array, hp: Any) -> tuple[Any, Any]:
        norm = official_norm(grads)
        if self.clip is not None:
            scale = jnp.where(norm > self.clip, self.clip / jax.lax.stop_gradient(norm), 1.0)
            grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
        if not self.track:
            return self.base.step(grads, state, params, step, hp)
        params, base_state = self.base.step(grads, state[0], params, step, hp)
        return params, (base_state, norm.astype(state[1].dtype), jnp.asarray(step, jnp.int32) + 1)

    def eval_params(self, state: Any, params: Any) -> Any:
        if not self.track:
            return self.base.eval_params(state, params)
        return self.base.eval_params(state[0], params), state[1], state[2]


def inner_optimizer(cfg: MLACConfig, *, track: bool | None = None) -> tuple[Adversary, Any]:
    """``(adversary, optimiser)`` of the simulated attacker: the plain engine optimiser (None) when ``cfg`` computes
    the inner loop jaxtar's way, else an `InnerOptimizer` (``track`` defaults to ``cfg.inner_norm_penalty``)."""
    adversary = inner_adversary(cfg)
    track = cfg.inner_norm_penalty if track is None else track
    detached = cfg.setting("inner_clip") == "detached"
    if not (detached or track):
        return adversary, None
    if detached:
        adversary = dataclasses.replace(adversary, clip_norm=None)
    base = make_optimizer(adversary)
    return adversary, InnerOptimizer(base, clip=cfg.inner_clip_norm if detached else None, track=track)


def gather(data: Arrays, idx: jax.Array) -> Arrays:
    """Rows ``idx`` of every array of ``data``."""
    return {k: v[idx] for k, v in data.items()}


def inner_batches(data: Arrays, key: jax.Array, cfg: MLACConfig) -> Arrays:
    """K batches [K, max_bs, ...] of random examples; the drawn batch size is a 0/1 ``weight`` mask."""
    k_idx, k_bs = jax.random.split(key)
    bmax, n = max(cfg.inner_batch_sizes), data["input_ids"].shape[0]
    idx = jax.random.randint(k_idx, (cfg.inner_steps, bmax), 0, n)
    size = jax.random.choice(k_bs, jnp.asarray(cfg.inner_batch_sizes))
    batches = gather(data, idx)
    batches["weight"] = jnp.broadcast_to(jnp.arange(bmax) < size, (cfg.inner_steps, bmax)).astype(jnp.float32)
    return batches


def attack_meta_value_and_grad(
    problem: AttackProblem,
    adversary: Adversary,
    opt: Any,
    flat: jax.Array,
    inner: Arrays,
    outer: Arrays,
    key: jax.Array,
    estimator: Estimator,
    hp: dict[str, jax.Array],
) -> Any:
    """The engine's MLAC meta-gradient (records k = 0..K, uniform weights): `meta_value_and_grad` itself when ``opt``
    is None (`inner_optimizer`: jaxtar's inner loop), else its core with the wrapped ``opt`` in the setup."""
    schedule = TamperSchedule.mlac()
    if opt is None:
        return meta_value_and_grad(problem, flat, inner, outer, adversary=adversary, key=key, schedule=schedule,
                                   estimator=estimator, hyperparams=hp)  # fmt: skip
    num_steps = jax.tree.leaves(inner)[0].shape[0]
    setup = make_setup(problem, adversary, num_steps=num_steps, schedule=schedule, estimator=estimator)
    weights = jnp.asarray(schedule.weights(num_steps))
    return meta_core(setup._replace(opt=opt), flat, hp, None, weights, inner, outer, key, "zero")


def harmful_ce_lr_grad(
    problem: AttackProblem,
    logits: Callable[[jax.Array, Arrays], jax.Array],
    opt: Any,
    cfg: MLACConfig,
    flat: jax.Array,
    hp: dict[str, jax.Array],
    outer: Arrays,
    inner: Arrays,
    key: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """``(lr_grad, finite)`` of ``inner_lr_objective`` "harmful_ce" (official): lr_grad is d/d lr of the mean *plain*
    harmful CE of the attacker over k = 0..K on the outer batch (the gradient the lr's Adam descends: a stronger
    attacker), taken in forward mode through its own unroll of ``opt`` (the same attack the meta-gradient runs),
    then clipped as torch's ``clip_grad_norm_(max_norm=cfg.outer_clip_norm)`` (`clip_scalar`); 0 if not finite."""
    plain = lambda t: cross_entropy(logits(t, outer), outer[cfg.harmful_key])

    def mean_ce(lr: jax.Array) -> jax.Array:
        h = {**hp, "learning_rate": lr}
        t0 = problem.attack_init(flat, key)
        step = make_step(problem, opt, flat, h)

        def body(c: Carry, batch: Arrays) -> tuple[Carry, jax.Array]:
            c, _ = step(c, batch)
            return c, plain(opt.eval_params(c.opt_state, c.trainable))

        _, ces = jax.lax.scan(body, Carry(t0, opt.init(t0, h), jnp.zeros((), jnp.int32), None), inner)
        return (plain(t0) + jnp.sum(ces)) / (ces.shape[0] + 1)

    lr = hp["learning_rate"]
    _, grad = jax.jvp(mean_ce, (lr,), (jnp.ones_like(lr),))
    finite = jnp.isfinite(grad)
    return jnp.where(finite, clip_scalar(grad, cfg.outer_clip_norm), 0.0), finite


def clip_scalar(g: jax.Array, max_norm: float) -> jax.Array:
    """torch's ``clip_grad_norm_`` of one scalar: ``g * min(1, max_norm / (|g| + 1e-6))``.

    Example:
        >>> float(clip_scalar(jnp.float32(-40.0), 10.0)), float(clip_scalar(jnp.float32(3.0), 10.0))
        (-10.0, 3.0)
    """
    return g * jnp.minimum(1.0, max_norm / (jnp.abs(g) + 1e-6))
