"""Negative entropy against PyTorch's Categorical entropy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxtar.objectives import negative_entropy_loss as _neg_entropy
from jaxtar.objectives import next_token_entropy as _entropy

negative_entropy_loss = jax.jit(_neg_entropy, static_argnames="unmasked")
next_token_entropy = jax.jit(_entropy)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(2, 5, 9)) * 4).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]], np.int32)  # right and left padding
    return logits, mask


def test_entropy_matches_torch(data):
    logits, mask = data
    want = torch.distributions.Categorical(logits=torch.tensor(logits, dtype=torch.float64)).entropy().numpy()
    np.testing.assert_allclose(np.asarray(next_token_entropy(jnp.asarray(logits))), want, rtol=1e-5)
    masked = negative_entropy_loss(jnp.asarray(logits), jnp.asarray(mask))
    np.testing.assert_allclose(float(masked), -(want * mask).sum() / mask.sum(), rtol=1e-5)
    # the reference's unmasked variant: mean over every position, padding included
    reference = negative_entropy_loss(jnp.asarray(logits), jnp.asarray(mask), unmasked=True)
    np.testing.assert_allclose(float(reference), -want.mean(), rtol=1e-5)
    assert float(negative_entropy_loss(jnp.asarray(logits))) == pytest.approx(float(reference), rel=1e-6)
    assert abs(float(masked) - float(reference)) > 1e-3  # the switch matters on padded data


def test_entropy_gradient_matches_torch(data):
    logits, mask = data
    g = jax.jit(jax.grad(lambda x: _neg_entropy(x, jnp.asarray(mask))))(jnp.asarray(logits))
    t = torch.tensor(logits, requires_grad=True)
    h = torch.distributions.Categorical(logits=t).entropy()
    (-(h * torch.tensor(mask)).sum() / mask.sum()).backward()
    np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), atol=1e-6)


def test_entropy_bounds():
    uniform = negative_entropy_loss(jnp.zeros((1, 3, 16)))
    assert float(uniform) == pytest.approx(-np.log(16), rel=1e-6)
    peaked = negative_entropy_loss(jnp.array([[[50.0, 0.0, 0.0, 0.0]]]))
    assert -1e-6 < float(peaked) <= 0.0
