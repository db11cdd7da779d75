"""Attack optimisers against hand-written float64 update rules (PyTorch semantics) and optax's own pieces."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtar.attacks import Adversary, Schedule, lr_multiplier, make_optimizer
from jaxtar.attacks.optimizers import _safe_clip_by_global_norm

STEPS = 4
SCHED = Schedule("warmup_cosine", warmup_steps=2)


def _reference(adv: Adversary, p: np.ndarray, grads: list[np.ndarray]) -> np.ndarray:
    """Float64 update rules written from the optimisers' definitions (decoupled decay for AdamW / Lion)."""
    wd, lr0 = adv.weight_decay, adv.lr
    m, v, buf = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    eg, ex = np.zeros_like(p), np.zeros_like(p)
    mult = lambda k: (k / 2) if k < 2 else 0.5 * (1 + math.cos(math.pi * (k - 2) / (STEPS - 2)))
    for k, g in enumerate(grads):
        if adv.clip_norm is not None:
            g = g * min(1.0, adv.clip_norm / np.linalg.norm(g))
        lr = lr0 * mult(k)
        kind = adv.optimizer
        if kind in ("sgd", "sgd_momentum", "sgd_nesterov", "adam", "adadelta"):
            g = g + wd * p  # L2 decay folded into the gradient
        if kind == "sgd":
            p = p - lr * g
        elif kind in ("sgd_momentum", "sgd_nesterov"):
            buf = adv.momentum * buf + g
            p = p - lr * (g + adv.momentum * buf if kind == "sgd_nesterov" else buf)
        elif kind in ("adam", "adamw"):
            m = adv.b1 * m + (1 - adv.b1) * g
            v = adv.b2 * v + (1 - adv.b2) * g * g
            u = (m / (1 - adv.b1 ** (k + 1))) / (np.sqrt(v / (1 - adv.b2 ** (k + 1)) + adv.eps_root) + adv.eps)
            p = p - lr * (u + (wd * p if kind == "adamw" else 0.0))
        elif kind == "adadelta":
            eg = adv.rho * eg + (1 - adv.rho) * g * g
            delta = np.sqrt(ex + adv.eps) / np.sqrt(eg + adv.eps) * g
            ex = adv.rho * ex + (1 - adv.rho) * delta * delta
            p = p - lr * delta
        elif kind == "lion":
            c = adv.b1 * m + (1 - adv.b1) * g
            p = p - lr * (np.sign(c) + wd * p)
            m = adv.b2 * m + (1 - adv.b2) * g
    return p


def _run(adv: Adversary, p0: np.ndarray, grads: list[np.ndarray]) -> np.ndarray:
    opt = make_optimizer(adv)
    hp = opt.default_hyperparams()

    @jax.jit
    def run(p, gs):
        s = opt.init(p, hp)
        for k in range(STEPS):
            p, s = opt.step(gs[k], s, p, k, hp)
        return opt.eval_params(s, p)

    return np.asarray(run(jnp.asarray(p0, jnp.float32), jnp.asarray(np.stack(grads), jnp.float32)))


@pytest.mark.parametrize(
    "kind, extra",
    [
        ("sgd", dict(clip_norm=0.5)),
        ("sgd_momentum", {}),
        ("sgd_nesterov", {}),
        ("adam", dict(eps_root=1e-6)),
        ("adamw", dict(clip_norm=2.0)),
        ("adadelta", dict(lr=0.5)),
        ("lion", {}),
    ],
)
def test_optimizer_matches_reference(kind, extra):
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=6)
    grads = [rng.normal(size=6) for _ in range(STEPS)]
    adv = Adversary(kind, **{"lr": 0.1, "weight_decay": 0.05, "schedule": SCHED, "steps": STEPS, **extra})
    np.testing.assert_allclose(_run(adv, p0, grads), _reference(adv, p0, grads), rtol=2e-5, atol=1e-6)


def test_schedule_free_adamw_equals_optax_contrib():
    """Our differentiable composition equals optax.contrib.schedule_free_adamw when eps_root = 0."""
    rng = np.random.default_rng(1)
    p0 = rng.normal(size=5).astype(np.float32)
    grads = [rng.normal(size=5).astype(np.float32) for _ in range(STEPS)]
    adv = Adversary("schedule_free_adamw", lr=0.1, weight_decay=0.01, eps_root=0.0, steps=STEPS)
    ours = _run(adv, p0, grads)
    tx = optax.contrib.schedule_free_adamw(0.1, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
    p, s = jnp.asarray(p0), tx.init(jnp.asarray(p0))
    for g in grads:
        u, s = tx.update(jnp.asarray(g), s, p)
        p = optax.apply_updates(p, u)
    np.testing.assert_allclose(ours, optax.contrib.schedule_free_eval_params(s, p), rtol=1e-5, atol=1e-6)


def test_lr_multipliers_closed_form():
    k = np.arange(12)
    f = lambda sched, steps=12: np.array([float(lr_multiplier(sched, steps)(i)) for i in k])
    np.testing.assert_allclose(f(Schedule()), 1.0)
    np.testing.assert_allclose(f(Schedule("linear_warmup", warmup_steps=4)), np.minimum(k / 4, 1.0), atol=1e-7)
    cos = np.where(k < 2, k / 2, 0.5 * (1 + np.cos(np.pi * (k - 2) / 10)))
    np.testing.assert_allclose(f(Schedule("warmup_cosine", warmup_steps=2)), cos, atol=1e-6)
    sgdr = 0.5 * (1 + np.cos(np.pi * (k % 4) / 4))  # restarts every 4 steps
    np.testing.assert_allclose(f(Schedule("sgdr", cycle_steps=4)), sgdr, atol=1e-6)
    ended = f(Schedule("warmup_cosine", warmup_steps=2, end_fraction=0.1), steps=7)
    np.testing.assert_allclose(ended[7:], 0.1, atol=1e-6)


def test_safe_clip_value_and_derivative():
    g = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.0])}
    ours, _ = _safe_clip_by_global_norm(1.0).update(g, None)
    ref, _ = optax.clip_by_global_norm(1.0).update(g, optax.EmptyState())
    np.testing.assert_allclose(ours["a"], ref["a"], rtol=1e-6)
    zero = lambda clip: jax.grad(lambda x: jnp.sum(clip.update({"a": x}, None)[0]["a"]))(jnp.zeros(2))
    np.testing.assert_allclose(zero(_safe_clip_by_global_norm(1.0)), [1.0, 1.0])
    assert np.isnan(zero(optax.clip_by_global_norm(1.0))).all()  # why we keep our own


def test_hyperparams_are_explicit_and_checked():
    opt = make_optimizer(Adversary("sgd", lr=0.5, steps=2))
    p = jnp.ones(2)
    with pytest.raises(ValueError, match="exactly"):
        opt.init(p, {"learning_rate": jnp.float32(0.1)})
    # the learning rate is an input: differentiate one step's result with respect to it
    hp = opt.default_hyperparams()
    d_lr = jax.grad(lambda lr: opt.step(jnp.ones(2), opt.init(p, hp), p, 0, dict(hp, learning_rate=lr))[0].sum())
    np.testing.assert_allclose(d_lr(jnp.float32(0.5)), -2.0)
