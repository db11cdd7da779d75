"""Random-mapping cosine loss: TAR's initial safeguard (docs/methods.md#random-mapping).

A fixed random matrix ``R [vocab, hidden]`` assigns each token id a random direction. On forget text every hidden
state ``h_l[b, t]`` (embeddings and each layer, HF convention) is pushed to align with ``R[token[b, t]]``:
``loss = mean_layers masked_mean_tokens (1 - |cos(h, R[token])|)``.

``R`` is never stored: row ``v`` is ``normal(fold_in(key, v), (hidden,))``, so only the rows of the tokens in a
batch are generated, and :func:`random_mapping_matrix` (all rows) agrees with them exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtar.objectives._precision import at_least_f32
from jaxtar.objectives.lm import masked_mean
from jaxtar.objectives.representation import HiddenStates, layer_list, safe_norm


def _as_key(key: jax.Array | int) -> jax.Array:
    """Accepts a typed key, a legacy uint32 ``[2]`` key, or an integer seed (also traced)."""
    key = jnp.asarray(key) if isinstance(key, int) else key
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 0:
        return jax.random.key(key)
    return key


def random_mapping_vectors(
    key: jax.Array | int, token_ids: jax.Array, hidden_size: int, dtype: jnp.dtype = jnp.float32
) -> jax.Array:
    """The rows ``R[token_ids]`` of the seeded random matrix, without materialising ``R``.

    Args:
        key: a PRNG key (or an int seed) that fixes ``R``.
        token_ids: int array of any shape ``[...]``.
        hidden_size: the model's hidden size ``D``.
        dtype: output dtype.

    Returns:
        ``[..., D]`` standard-normal vectors; equal ids give equal vectors.

    Example:
        >>> r = random_mapping_vectors(0, jnp.array([[3, 5, 3]]), 8)
        >>> r.shape, bool(jnp.array_equal(r[0, 0], r[0, 2]))
        ((1, 3, 8), True)
    """
    if hidden_size < 1:
        raise ValueError(f"hidden_size must be >= 1, got {hidden_size}")
    key = _as_key(key)
    ids = jnp.asarray(token_ids).astype(jnp.int32)
    flat = ids.reshape(-1)
    rows = jax.vmap(lambda v: jax.random.normal(jax.random.fold_in(key, v), (hidden_size,), dtype))(flat)
    return rows.reshape(ids.shape + (hidden_size,))


def random_mapping_matrix(
    key: jax.Array | int, vocab_size: int, hidden_size: int, dtype: jnp.dtype = jnp.float32
) -> jax.Array:
    """The whole ``[vocab_size, hidden_size]`` matrix ``R`` (for inspection and tests; large for big vocabularies).

    Example:
        >>> random_mapping_matrix(0, 4, 8).shape
        (4, 8)
    """
    return random_mapping_vectors(key, jnp.arange(vocab_size), hidden_size, dtype)


def cosine_similarity(x: jax.Array, y: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Cosine similarity along the last axis, ``x.y / (max(|x|, eps) * max(|y|, eps))`` (as in PyTorch).

    Example:
        >>> float(cosine_similarity(jnp.array([1.0, 0.0]), jnp.array([-2.0, 0.0])))
        -1.0
    """
    x, y = at_least_f32(x), at_least_f32(y)
    denominator = jnp.maximum(safe_norm(x), eps) * jnp.maximum(safe_norm(y), eps)
    return jnp.sum(x * y, axis=-1) / denominator


def random_mapping_loss(
    hidden_states: HiddenStates,
    targets_btd: jax.Array,
    mask_bt: jax.Array | None = None,
    *,
    unmasked: bool = False,
) -> jax.Array:
    """``mean_layers masked_mean_tokens (1 - |cos(h_l[b, t], targets[b, t])|)``.

    Args:
        hidden_states: tuple of ``L`` arrays ``[B, T, D]`` (HF convention) or one ``[L, B, T, D]`` array.
        targets_btd: ``[B, T, D]`` the random rows for the batch's tokens, from :func:`random_mapping_vectors`.
        mask_bt: ``[B, T]`` 1 on real tokens (``attention_mask``); None counts all tokens.
        unmasked: reproduce the reference implementation (all positions, padding included).

    Returns:
        A float32 scalar in ``[0, 1]``.

    Example:
        >>> ids = jnp.array([[1, 2]])
        >>> r = random_mapping_vectors(0, ids, 4)
        >>> float(random_mapping_loss((r, -2 * r), r))  # perfectly (anti-)aligned
        0.0
    """
    layers = layer_list(hidden_states)
    if targets_btd.shape != layers[0].shape:
        raise ValueError(f"targets {targets_btd.shape} must match the hidden states' [B, T, D] = {layers[0].shape}")
    if mask_bt is not None and mask_bt.shape != layers[0].shape[:2]:
        raise ValueError(f"mask {mask_bt.shape} must match the hidden states' [B, T] = {layers[0].shape[:2]}")
    targets = jax.lax.stop_gradient(targets_btd)
    mask = None if (unmasked or mask_bt is None) else mask_bt
    per_layer = [masked_mean(1.0 - jnp.abs(cosine_similarity(h, targets)), mask) for h in layers]
    return sum(per_layer) / len(per_layer)


def random_mapping_loss_from_ids(
    hidden_states: HiddenStates,
    input_ids_bt: jax.Array,
    key: jax.Array | int,
    mask_bt: jax.Array | None = None,
    *,
    unmasked: bool = False,
) -> jax.Array:
    """:func:`random_mapping_loss` with the targets generated from the batch's token ids and ``key``.

    Example:
        >>> h = (jnp.ones((1, 3, 8)),)
        >>> 0.0 < float(random_mapping_loss_from_ids(h, jnp.array([[1, 2, 3]]), key=0)) < 1.0
        True
    """
    layers = layer_list(hidden_states)
    targets = random_mapping_vectors(key, input_ids_bt, layers[0].shape[-1])
    return random_mapping_loss(layers, targets, mask_bt, unmasked=unmasked)
