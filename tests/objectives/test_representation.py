"""Hidden-state distance to the frozen base model against PyTorch."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxtar.objectives import representation_distance_loss as _distance

representation_distance_loss = jax.jit(_distance, static_argnames="unmasked")


def _data(seed=4):
    rng = np.random.default_rng(seed)
    hs = tuple(rng.normal(size=(2, 5, 6)).astype(np.float32) for _ in range(3))
    base = tuple(h + rng.normal(size=h.shape).astype(np.float32) * (i + 1) for i, h in enumerate(hs))
    mask = np.array([[1, 1, 1, 1, 0], [0, 0, 1, 1, 1]], np.int32)
    return hs, base, mask


def _torch_loss(hs, base, mask):
    per_layer = []
    for h, h0 in zip(hs, base):
        d = torch.linalg.vector_norm(h - h0.detach(), dim=-1)
        per_layer.append((d * mask).sum() / mask.sum())
    return torch.stack(per_layer).mean()


def test_distance_matches_torch_value_and_gradient():
    hs, base, mask = _data()
    got, grads = jax.jit(jax.value_and_grad(lambda h: _distance(h, base, jnp.asarray(mask))))(
        tuple(jnp.asarray(h) for h in hs)
    )
    t_hs = [torch.tensor(h, requires_grad=True) for h in hs]
    want = _torch_loss(t_hs, [torch.tensor(b) for b in base], torch.tensor(mask))
    want.backward()
    np.testing.assert_allclose(float(got), want.item(), rtol=1e-5)
    for g, t in zip(grads, t_hs):
        np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), atol=1e-6)
    # stacked [L, B, T, D] input is the same thing; unmasked averages every token
    stacked = representation_distance_loss(jnp.stack(hs), jnp.stack(base), jnp.asarray(mask))
    np.testing.assert_allclose(float(stacked), float(got), rtol=1e-6)
    unmasked = representation_distance_loss(hs, base, jnp.asarray(mask), unmasked=True)
    np.testing.assert_allclose(
        float(unmasked),
        _torch_loss([torch.tensor(h) for h in hs], [torch.tensor(b) for b in base], torch.ones(2, 5)).item(),
        rtol=1e-5,
    )


def test_zero_distance_has_zero_not_nan_gradient():
    # TAR starts at the base model: every distance is exactly 0 on the first step
    hs, _, mask = _data()
    hs_j = tuple(jnp.asarray(h) for h in hs)
    loss, grads = jax.jit(jax.value_and_grad(lambda h: _distance(h, hs_j, jnp.asarray(mask))))(hs_j)
    assert float(loss) == 0.0
    for g in grads:
        assert np.all(np.asarray(g) == 0.0)
    t = torch.tensor(hs[0], requires_grad=True)
    torch.linalg.vector_norm(t - torch.tensor(hs[0]), dim=-1).sum().backward()
    assert torch.all(t.grad == 0)  # PyTorch agrees


def test_base_hidden_states_are_frozen():
    hs, base, mask = _data()
    g = jax.jit(jax.grad(lambda b: _distance(hs, b, jnp.asarray(mask))))(tuple(jnp.asarray(b) for b in base))
    assert all(np.all(np.asarray(x) == 0.0) for x in g)
