"""Second-order TAR (estimator ``exact``) against a directly written unrolled reference on a tiny Llama."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tar_reference import flat64, next_token_ce, rel_err

from jaxtar.config import TarConfig
from jaxtar.defenses import make_tar_step, train_suite

# ----------------------------------------------------------------------------------------------------------------
# Second-order TAR: one outer step of `make_tar_step` with estimator exact / remat against jax.grad of a directly
# written objective (a Python-unrolled K-step AdamW attack per adversary, hand-written Adam, the negative-entropy
# tamper loss at every s-th step with weights exp(rate * (j - K)), plus the retain CE + representation distance),
# on a tiny Llama. The same objective with the attacked weights under stop_gradient is TAR's first-order estimator.

K2, S2, A2, B2, T2, V2 = 2, 1, 1, 2, 8, 64
# The adversaries' Adam eps (a per-step hyper-parameter) is 1e-3 instead of 1e-8: with 1e-8, entries whose gradient
# is ~1e-8 make Adam's derivative ~1/eps, and float32 rounding then moves any two implementations apart by ~1 %.
ADV_LRS, ADV_EPS = (3e-2,), 1e-3


def _tiny_tar_problem():
    from jaxtar.models import LlamaConfig, create_model

    cfg = LlamaConfig.tiny(vocab_size=V2, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                           num_kv_heads=1)  # fmt: skip
    model, base = create_model(cfg, seed=0)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: x + 0.02 * rng.standard_normal(x.shape).astype(x.dtype), base)

    def rows(*lead, prompt=0):
        ids = rng.integers(0, V2, (*lead, B2, T2)).astype(np.int32)
        attention = np.ones_like(ids)
        attention[..., 1, T2 - 2 :] = 0  # the second row is right-padded
        loss = attention.copy()
        loss[..., :prompt] = 0  # no loss on a "prompt"
        return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss}

    hyper = {"learning_rate": np.asarray(ADV_LRS, np.float32), "weight_decay": np.full(A2, 0.01, np.float32),
             "b1": np.full(A2, 0.9, np.float32), "b2": np.full(A2, 0.999, np.float32),
             "eps": np.full(A2, ADV_EPS, np.float32), "eps_root": np.full(A2, 1e-16, np.float32)}  # fmt: skip
    batches = {"adversary": rows(A2, K2, prompt=3), "tamper": rows(), "retain": rows(), "hyperparams": hyper}
    return model, base, params, batches


def _reference_objective(model, config, first_order):
    """``lambda_TR * mean_a sum_j w_j L_TR(theta_j^a) + lambda_retain * (CE + rep)`` as a function of the params."""

    def fwd(p, b, hidden=False):
        return model.apply(p, b["input_ids"], b["attention_mask"], output_hidden_states=hidden)

    def neg_entropy(p, b):
        logp = jax.nn.log_softmax(fwd(p, b).logits.astype(jnp.float32), -1)
        m = b["attention_mask"].astype(jnp.float32)
        return jnp.sum(jnp.sum(jnp.exp(logp) * logp, -1) * m) / jnp.sum(m)

    def attack(p, b):
        return next_token_ce(fwd(p, b).logits, b["input_ids"], b["loss_mask"])

    def objective(params, frozen, batches):
        hp, tamper = batches["hyperparams"], batches["tamper"]
        total = 0.0
        for a in range(A2):
            lr, wd, b1, b2, eps, eps_root = (hp[n][a] for n in ("learning_rate", "weight_decay", "b1", "b2", "eps",
                                                                "eps_root"))  # fmt: skip
            theta = params
            m = jax.tree.map(jnp.zeros_like, params)
            v = jax.tree.map(jnp.zeros_like, params)
            for k in range(K2):
                g = jax.grad(attack)(theta, {key: x[a, k] for key, x in batches["adversary"].items()})
                t = k + 1
                m = jax.tree.map(lambda m, g, b1=b1: b1 * m + (1 - b1) * g, m, g)
                v = jax.tree.map(lambda v, g, b2=b2: b2 * v + (1 - b2) * g * g, v, g)

                def adam(p, m, v, t=t, lr=lr, wd=wd, b1=b1, b2=b2, eps=eps, eps_root=eps_root):
                    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
                    return p - lr * (m_hat / (jnp.sqrt(v_hat + eps_root) + eps) + wd * p)

                theta = jax.tree.map(adam, theta, m, v)
                if t % S2 == 0:
                    at = theta
                    if first_order:  # d theta_j / d theta_0 = I: the gradient of L_TR at theta_j, applied to theta_0
                        at = jax.tree.map(lambda p, th: p + jax.lax.stop_gradient(th - p), params, theta)
                    total = total + math.exp(config.tamper_rate * (t - K2)) * neg_entropy(at, tamper) / A2
        out, ref = fwd(params, batches["retain"], True), fwd(frozen, batches["retain"], True)
        mask = batches["retain"]["attention_mask"].astype(jnp.float32)
        dist = [jnp.sum(jnp.sqrt(jnp.sum((h - h0) ** 2, -1)) * mask) / jnp.sum(mask)
                for h, h0 in zip(out.hidden_states, ref.hidden_states)]  # fmt: skip
        b = batches["retain"]
        retain = next_token_ce(out.logits, b["input_ids"], b["loss_mask"])
        retain = retain + config.lambda_representation * sum(dist) / len(dist)
        return config.lambda_tr * total + config.lambda_retain * retain, total

    return jax.jit(jax.value_and_grad(objective, has_aux=True))


def _outer_gradient(params, opt_state, b2):
    """The gradient the outer step fed its schedule-free AdamW (no weight decay, no clipping), read back from the
    state after one step: |g| = sqrt(nu / (1 - b2)); sign(g) = sign(params - z)."""
    sf = opt_state[1]
    nu = sf.base_optimizer_state[0].nu
    return jax.tree.map(lambda p, z, n: np.sign(p - z) * np.sqrt(n / (1 - b2)), params, sf.z, nu)


def test_second_order_tar_step_equals_grad_of_the_unrolled_objective():
    model, base, params, batches = _tiny_tar_problem()
    config = TarConfig(inner_steps=K2, tamper_every=S2, adversaries_per_step=A2, warmup_steps=0, lr=1e-3,
                       setting="cyber", adversary_lrs=ADV_LRS)  # fmt: skip
    assert config.weight_decay == 0 and config.max_grad_norm is None
    template = train_suite(config)[0]
    key = jax.random.key(0)
    grads, values, deltas = {}, {}, {}
    for kind in ("exact", "tar"):
        cfg = TarConfig(**{**config.__dict__, "estimator": kind})
        step, optimizer = make_tar_step(model, cfg, template)
        new, state, metrics = step(params, optimizer.init(params), batches, key, base)
        assert float(metrics["finite_fraction"]) == 1.0
        grads[kind] = flat64(_outer_gradient(params, state, cfg.b2))
        values[kind] = float(metrics["tamper_value"])
        deltas[kind] = flat64(new) - flat64(params)

    jb = jax.tree.map(jnp.asarray, batches)
    (_, ref_value), ref_grad = _reference_objective(model, config, first_order=False)(params, base, jb)
    ref_grad = flat64(ref_grad)
    err = {"exact": rel_err(grads["exact"], ref_grad), "exact vs tar": rel_err(grads["exact"], grads["tar"])}
    for kind in ("exact", "tar"):
        assert values[kind] == pytest.approx(float(ref_value), rel=1e-5)  # the same tamper value, whatever estimator
    assert err["exact"] < 1e-4, err  # second-order TAR = grad of the unrolled objective
    assert err["exact vs tar"] > 1e-2, err  # the first-order estimator drops the second-order terms ...
    assert np.max(np.abs(deltas["exact"] - deltas["tar"])) > 1e-4  # ... and so its outer update differs
