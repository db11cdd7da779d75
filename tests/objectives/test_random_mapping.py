"""Random-mapping cosine loss against PyTorch's cosine_similarity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxtar.objectives import random_mapping_loss as _rm_loss
from jaxtar.objectives import random_mapping_loss_from_ids, random_mapping_matrix, random_mapping_vectors
from jaxtar.objectives.random_mapping import _as_key

# Compiling threefry is slow on CPU: share one jitted generator and few shapes across the module.
random_mapping_loss = jax.jit(_rm_loss, static_argnames="unmasked")
_vectors = jax.jit(random_mapping_vectors, static_argnums=2)
IDS = np.random.default_rng(5).integers(0, 12, (2, 6))


@pytest.fixture(scope="module")
def tables():
    ids = jnp.asarray(np.concatenate([np.arange(12), IDS.ravel()]))  # one shape: one compilation
    both = np.asarray(_vectors(jax.random.key(3), ids, 8))
    matrix, rows = both[:12], both[12:].reshape(IDS.shape + (8,))
    other = np.asarray(_vectors(jax.random.key(4), ids, 8))[:12]
    return matrix, rows, other


def test_vectors_are_rows_of_the_seeded_matrix(tables):
    matrix, rows, other = tables
    np.testing.assert_array_equal(rows, matrix[IDS])
    assert not np.allclose(other, matrix)
    assert abs(matrix.mean()) < 0.3 and 0.7 < matrix.std() < 1.3
    assert len({tuple(r) for r in matrix.round(5)}) == 12  # a distinct direction per token id
    key_data = jax.random.key_data
    assert np.array_equal(key_data(_as_key(3)), key_data(jax.random.key(3)))  # an int seed is the same key
    assert random_mapping_matrix.__doc__ and random_mapping_matrix(3, 2, 8).shape == (2, 8)


def test_loss_matches_torch_value_and_gradient(tables):
    matrix, rows, _ = tables
    rng = np.random.default_rng(6)
    mask = np.array([[1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]], np.int32)
    hs = tuple(rng.normal(size=(2, 6, 8)).astype(np.float32) for _ in range(3))
    value, grads = jax.jit(jax.value_and_grad(lambda h: _rm_loss(h, jnp.asarray(rows), jnp.asarray(mask))))(
        tuple(jnp.asarray(h) for h in hs)
    )
    t_hs = [torch.tensor(h, requires_grad=True) for h in hs]
    t_mask = torch.tensor(mask, dtype=torch.float32)
    per_layer = [
        ((1 - F.cosine_similarity(h, torch.tensor(rows), dim=-1).abs()) * t_mask).sum() / t_mask.sum() for h in t_hs
    ]
    want = torch.stack(per_layer).mean()
    want.backward()
    np.testing.assert_allclose(float(value), want.item(), rtol=1e-5)
    for g, t in zip(grads, t_hs):
        np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), atol=1e-6)
    from_ids = jax.jit(random_mapping_loss_from_ids)(hs, jnp.asarray(IDS), jax.random.key(3), jnp.asarray(mask))
    assert float(from_ids) == pytest.approx(float(value), rel=1e-6)
    unmasked = random_mapping_loss(hs, jnp.asarray(rows), jnp.asarray(mask), unmasked=True)
    assert float(unmasked) == pytest.approx(float(random_mapping_loss(hs, jnp.asarray(rows))), rel=1e-6)


def test_loss_is_zero_when_aligned_or_anti_aligned(tables):
    _, rows, _ = tables
    r = jnp.asarray(rows)
    assert float(random_mapping_loss((3 * r, -0.5 * r), r)) == pytest.approx(0.0, abs=1e-6)
    orthogonal = jnp.concatenate([r[..., 1:2], -r[..., 0:1], jnp.zeros_like(r[..., 2:])], -1)
    assert float(random_mapping_loss((orthogonal, r), r)) == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="targets"):
        _rm_loss((r,), r[:, :3])
