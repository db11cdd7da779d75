"""The objectives' precision rule: compute in at least float32 (bf16/f16 inputs are upcast, float64 stays float64)."""

import jax
import jax.numpy as jnp


def at_least_f32(x: jax.Array) -> jax.Array:
    """``x`` cast to ``promote_types(x.dtype, float32)``.

    Example:
        >>> at_least_f32(jnp.ones(2, jnp.bfloat16)).dtype, at_least_f32(jnp.ones(2, jnp.float32)).dtype
        (dtype('float32'), dtype('float32'))
    """
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))
