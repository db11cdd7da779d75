"""Objectives compute in at least float32: bfloat16 inputs are upcast, float64 inputs stay float64 (so whole-defence
float64 finite-difference checks are possible) and agree with numpy float64 references to ~1e-12."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxtar.objectives import next_token_cross_entropy, next_token_entropy
from jaxtar.objectives.dpo import dpo_loss
from jaxtar.objectives.representation import per_token_distance


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_float64_objectives_stay_float64_and_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)) * 3
    labels = rng.integers(0, 7, (2, 5))
    with jax.enable_x64(True):
        ce = next_token_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
        ent = next_token_entropy(jnp.asarray(logits))
        dist = per_token_distance((jnp.asarray(logits),), (jnp.zeros_like(jnp.asarray(logits)),))
        pc, pr, rc, rr = (jnp.asarray(rng.normal(size=4)) for _ in range(4))
        dpo = dpo_loss(pc, pr, rc, rr, beta=0.5)
    lp = _np_log_softmax(logits)
    want_ce = -np.mean(np.take_along_axis(lp[:, :-1], labels[:, 1:, None], -1))
    assert ce.dtype == jnp.float64 and ent.dtype == jnp.float64 and dist.dtype == jnp.float64
    assert dpo.loss.dtype == jnp.float64
    np.testing.assert_allclose(float(ce), want_ce, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(ent), -np.sum(np.exp(lp) * lp, -1), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(dist)[0], np.linalg.norm(logits, axis=-1), rtol=1e-12)


def test_low_precision_inputs_are_upcast_to_float32():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(1, 4, 6)), jnp.bfloat16)
    assert next_token_cross_entropy(logits, jnp.zeros((1, 4), jnp.int32)).dtype == jnp.float32
    assert next_token_entropy(logits).dtype == jnp.float32
