"""Representation distance to a frozen base model: the second half of TAR's retain loss.

``L = mean_layers masked_mean_tokens ||h_l[b, t] - h0_l[b, t]||_2`` over the Hugging Face hidden-states tuple
(embeddings + every layer), with the *unsquared* L2 norm per token. The base model's hidden states are frozen
(no gradient flows into them).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxtar.objectives._precision import at_least_f32
from jaxtar.objectives.lm import masked_mean

HiddenStates = Sequence[jax.Array] | jax.Array


def stack_hidden_states(hidden_states: HiddenStates) -> jax.Array:
    """Stacks a tuple of ``L`` arrays ``[B, T, D]`` into ``[L, B, T, D]`` (an array already stacked passes through).

    Example:
        >>> stack_hidden_states((jnp.zeros((2, 3, 4)), jnp.ones((2, 3, 4)))).shape
        (2, 2, 3, 4)
    """
    if isinstance(hidden_states, tuple | list):
        if len(hidden_states) == 0:
            raise ValueError("hidden_states is empty")
        stacked = jnp.stack([jnp.asarray(h) for h in hidden_states])
    else:
        stacked = jnp.asarray(hidden_states)
    if stacked.ndim != 4:
        raise ValueError(f"hidden states must be L arrays [B, T, D] (stacked [L, B, T, D]), got {stacked.shape}")
    return stacked


def layer_list(hidden_states: HiddenStates) -> list[jax.Array]:
    """The hidden states as a list of ``[B, T, D]`` arrays (a stacked ``[L, B, T, D]`` array is split).

    Losses iterate over this list instead of stacking, so no extra ``[L, B, T, D]`` copy is made.

    Example:
        >>> len(layer_list(jnp.zeros((3, 1, 2, 4))))
        3
    """
    if isinstance(hidden_states, tuple | list):
        layers = [jnp.asarray(h) for h in hidden_states]
    else:
        layers = list(jnp.asarray(hidden_states))
    if not layers:
        raise ValueError("hidden_states is empty")
    if any(h.ndim != 3 or h.shape != layers[0].shape for h in layers):
        raise ValueError(f"hidden states must be L arrays of one shape [B, T, D], got {[h.shape for h in layers]}")
    return layers


def safe_norm(x: jax.Array, axis: int = -1) -> jax.Array:
    """Euclidean norm whose gradient is 0 (not NaN) where the norm is 0, like ``torch.linalg.norm``.

    TAR starts from the base model, so the distance is exactly 0 at the first step; a plain ``sqrt`` would
    turn that into NaN gradients.

    Example:
        >>> float(jax.grad(lambda v: safe_norm(v))(jnp.zeros(3)).sum())
        0.0
    """
    squared = jnp.sum(jnp.square(at_least_f32(x)), axis=axis)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def per_token_distance(hidden_states: HiddenStates, base_hidden_states: HiddenStates) -> jax.Array:
    """``[L, B, T]`` L2 distances between the model's and the (frozen) base model's hidden states.

    Example:
        >>> per_token_distance((jnp.ones((1, 2, 4)),), (jnp.zeros((1, 2, 4)),))
        Array([[[2., 2.]]], dtype=float32)
    """
    h = stack_hidden_states(hidden_states)
    h0 = jax.lax.stop_gradient(stack_hidden_states(base_hidden_states))
    if h.shape != h0.shape:
        raise ValueError(f"hidden states {h.shape} and base hidden states {h0.shape} differ in shape")
    return safe_norm(at_least_f32(h) - at_least_f32(h0), axis=-1)


def representation_distance_loss(
    hidden_states: HiddenStates,
    base_hidden_states: HiddenStates,
    mask_bt: jax.Array | None = None,
    *,
    unmasked: bool = False,
    eps: float = 0.0,
) -> jax.Array:
    """Mean over layers of the masked mean over tokens of the per-token L2 distance to the base model.

    The unsquared norm is not smooth at 0: its gradient is the *unit* vector ``(h - h0) / |h - h0|`` however small
    the difference. At exactly 0 the gradient is 0 (as in PyTorch), but when the base hidden states come from a
    differently compiled forward pass, float noise (~1e-7) gives every token an O(1) random gradient direction on
    the first steps of TAR. ``eps > 0`` uses ``sqrt(|d|^2 + eps^2) - eps`` instead, which is within ``eps`` of the
    distance and has a gradient that vanishes below ``eps``.

    Args:
        hidden_states: the trained model's hidden states: a tuple of ``L`` arrays ``[B, T, D]`` (HF
            ``output_hidden_states`` convention) or one ``[L, B, T, D]`` array.
        base_hidden_states: the frozen base model's hidden states on the same batch (same shape).
        mask_bt: ``[B, T]`` 1 on real tokens (the batch's ``attention_mask``); None counts all tokens.
        unmasked: reproduce the reference implementation (all positions, padding included).
        eps: smoothing of the norm near 0 (0: the exact distance, as in the reference).

    Returns:
        A float32 scalar.

    Example:
        >>> h = (jnp.ones((1, 2, 4)), 3 * jnp.ones((1, 2, 4)))
        >>> h0 = (jnp.zeros((1, 2, 4)), jnp.zeros((1, 2, 4)))
        >>> float(representation_distance_loss(h, h0))  # (2 + 6) / 2
        4.0
    """
    layers, base_layers = layer_list(hidden_states), layer_list(base_hidden_states)
    if len(layers) != len(base_layers) or layers[0].shape != base_layers[0].shape:
        raise ValueError(
            f"hidden states ({len(layers)} x {layers[0].shape}) and base hidden states "
            f"({len(base_layers)} x {base_layers[0].shape}) differ in shape"
        )
    if mask_bt is not None and mask_bt.shape != layers[0].shape[:2]:
        raise ValueError(f"mask {mask_bt.shape} must match the hidden states' [B, T] = {layers[0].shape[:2]}")
    mask = None if (unmasked or mask_bt is None) else mask_bt
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")

    def distance(h: jax.Array, h0: jax.Array) -> jax.Array:
        diff = h.astype(jnp.float32) - jax.lax.stop_gradient(h0).astype(jnp.float32)
        if eps == 0:
            return safe_norm(diff)
        return jnp.sqrt(jnp.sum(jnp.square(diff), axis=-1) + eps**2) - eps

    per_layer = [masked_mean(distance(h, h0), mask) for h, h0 in zip(layers, base_layers)]
    return sum(per_layer) / len(per_layer)
