"""`matmul` (the rank-2 dot of every linear layer and LM head) equals a plain contraction, derivatives included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtar.models import LlamaConfig, create_model
from jaxtar.models.layers import matmul


@pytest.mark.parametrize("shape", [(5, 4), (2, 5, 4), (2, 3, 5, 4)])
def test_matmul_equals_einsum_with_derivatives(shape):
    with jax.enable_x64(True):
        kx, kw = jax.random.split(jax.random.key(0))
        x = jax.random.normal(kx, shape, jnp.float64)
        w = jax.random.normal(kw, (4, 3), jnp.float64)
        ref = lambda x, w: jnp.einsum("...i,ij->...j", x, w)
        np.testing.assert_allclose(matmul(x, w), ref(x, w), rtol=1e-13)
        # second order (what a meta-gradient takes through every linear layer): grad of a grad-norm
        outer = lambda f: jax.grad(lambda x, w: jnp.sum(jax.grad(lambda w: jnp.sum(jnp.sin(f(x, w))))(w) ** 2),
                                   argnums=(0, 1))  # fmt: skip
        for a, b in zip(outer(matmul)(x, w), outer(ref)(x, w)):
            np.testing.assert_allclose(a, b, rtol=1e-12)


def test_matmul_keeps_dot_options():
    x = jnp.ones((2, 3, 4), jnp.bfloat16)
    y = matmul(x, jnp.ones((4, 6), jnp.bfloat16), preferred_element_type=jnp.float32)
    assert y.shape == (2, 3, 6) and y.dtype == jnp.float32
    np.testing.assert_array_equal(y, 4.0)


def test_llama_emits_only_rank2_dots_for_its_projections():
    """The speed-up of second-order autodiff on XLA's CPU backend depends on it (docs/benchmarks.md, meta-gradients)."""
    model, params = create_model(LlamaConfig.tiny(), seed=0)
    ids = jnp.zeros((2, 8), jnp.int32)
    jaxpr = jax.make_jaxpr(lambda p: model.apply(p, ids).logits)(params)

    def dots(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                yield eqn
            for sub in jax.core.jaxprs_in_params(eqn.params):
                yield from dots(sub)

    ranks = [tuple(v.aval.ndim for v in eqn.invars) for eqn in dots(jaxpr.jaxpr)]
    weight_dots = [r for r in ranks if r[1] == 2]  # the attention einsums have batched rank-4 operands
    assert len(weight_dots) == 7 + 1, ranks  # q, k, v, o, gate, up, down per (scanned) layer + the LM head
    assert all(r == (2, 2) for r in weight_dots), ranks
