"""The MLAC meta-gradient (exact, second order) against float64 central finite differences on a tiny BERT."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxtar.config import MLACConfig
from jaxtar.defenses.mlac import mlac_value_and_grad


def _tree_dot(a, b):
    return sum(float(jnp.vdot(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_meta_gradient_and_inner_lr_gradient_match_finite_differences(tiny_bert, random_batch, fast_compile):
    """K = 2 differentiable Adam steps with an active inner clip (norm 1e-3), a 3-of-4 masked inner batch and the
    calibrated harmful CE (unrolled solver): the parameter gradient along random directions and the learned inner
    lr's gradient equal central differences of the same float64 function."""
    cfg = MLACConfig(inner_steps=2, inner_batch_sizes=(3, 4), inner_clip_norm=1e-3, num_desired=3, num_harmful=2,
                     inner_lr=0.05, inner_lr_bounds=(1e-6, 0.1), calibration_method="unrolled",
                     calibration_steps=300)  # fmt: skip
    with jax.enable_x64(True):
        model, params = tiny_bert(cfg, jnp.float64)
        rng = np.random.default_rng(0)
        outer = random_batch(rng, 5)
        inner = jax.tree.map(lambda v: v.reshape((2, 4) + v.shape[1:]), random_batch(rng, 8))
        inner["weight"] = jnp.asarray([[1.0, 1.0, 1.0, 0.0]] * 2, jnp.float64)
        f = jax.jit(mlac_value_and_grad(model, cfg), compiler_options=fast_compile)
        key, lr = jax.random.key(3), jnp.asarray(0.05, jnp.float64)
        metrics, grads, lr_grad = f(params, lr, outer, inner, key)
        loss = lambda p, rate: float(f(p, rate, outer, inner, key)[0]["loss"])
        assert bool(metrics["finite"]) and metrics["loss"].dtype == jnp.float64
        # the attacker moved: its harmful CE changed over the 2 steps, and the attack is not trivially zero
        assert abs(float(metrics["attack_loss_last"] - metrics["attack_loss_first"])) > 1e-6
        eps = 1e-5
        for seed in (10, 11):
            gen = np.random.default_rng(seed)
            v = jax.tree.map(lambda x, g=gen: jnp.asarray(g.normal(size=x.shape)), params)
            plus, minus = (jax.tree.map(lambda a, b, s=s: a + s * eps * b, params, v) for s in (1.0, -1.0))
            fd = (loss(plus, lr) - loss(minus, lr)) / (2 * eps)
            np.testing.assert_allclose(_tree_dot(grads, v), fd, rtol=2e-5, atol=1e-8)
        h = 1e-6  # lr_grad is the gradient to *descend* for a stronger attacker = - d loss / d lr
        fd_lr = (loss(params, lr + h) - loss(params, lr - h)) / (2 * h)
        np.testing.assert_allclose(-float(lr_grad), fd_lr, rtol=2e-5, atol=1e-8)
        assert abs(fd_lr) > 1e-4  # the learned lr really influences the defence loss
