"""Small NNX parameter containers shared by the ports (the maths lives in ``layers.py``).

Stacked layers keep one leading axis ``L``: a ``StackedLinear`` holds ``kernel [L, in, out]`` (+ ``bias [L, out]``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class StackedLinear(nnx.Module):
    """``n_layers`` linear maps as one ``[L, in, out]`` kernel (normal(0, std)) and an optional ``[L, out]`` bias."""

    def __init__(self, n_layers: int, d_in: int, d_out: int, std: float, rngs: nnx.Rngs, *, bias: bool = True):
        self.kernel = nnx.Param(std * jax.random.normal(rngs.params(), (n_layers, d_in, d_out)))
        if bias:
            self.bias = nnx.Param(jnp.zeros((n_layers, d_out)))


class Dense(nnx.Module):
    """One linear map ``kernel [in, out]`` with an optional ``bias [out]``."""

    def __init__(self, d_in: int, d_out: int, std: float, rngs: nnx.Rngs, *, bias: bool = True):
        self.kernel = nnx.Param(std * jax.random.normal(rngs.params(), (d_in, d_out)))
        if bias:
            self.bias = nnx.Param(jnp.zeros((d_out,)))


class RMSNormParams(nnx.Module):
    """``scale`` (ones) for an RMSNorm of ``shape``."""

    def __init__(self, shape: tuple[int, ...]):
        self.scale = nnx.Param(jnp.ones(shape))


class LayerNormParams(nnx.Module):
    """``scale`` (ones) and ``bias`` (zeros) for a LayerNorm of ``shape``."""

    def __init__(self, shape: tuple[int, ...]):
        self.scale = nnx.Param(jnp.ones(shape))
        self.bias = nnx.Param(jnp.zeros(shape))
