"""Entropy of the next-token distribution: TAR's tamper-resistance loss for knowledge restriction.

TAR minimises the *negative* entropy of the model's next-token distribution on held-out forget text, i.e. it
pushes the (attacked) model towards maximally uncertain predictions on hazardous text. The ``*_from_hidden``
variants take final hidden states and the LM head and can run ``chunk`` tokens at a time (see
:mod:`jaxtar.objectives.lm`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtar.objectives._chunks import check_chunk, check_head, chunked_row_stats, head_logits
from jaxtar.objectives._precision import at_least_f32
from jaxtar.objectives.lm import masked_mean


def next_token_entropy(logits_btv: jax.Array) -> jax.Array:
    """Entropy (nats) of the predicted next-token distribution at every position.

    Args:
        logits_btv: ``[B, T, V]`` logits.

    Returns:
        ``[B, T]`` float32 entropies ``-sum_v p log p`` with ``p = softmax(logits)``.

    Example:
        >>> h = next_token_entropy(jnp.zeros((1, 2, 4)))
        >>> bool(jnp.allclose(h, jnp.log(4.0)))
        True
    """
    if logits_btv.ndim != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {logits_btv.shape}")
    log_p = jax.nn.log_softmax(at_least_f32(logits_btv), axis=-1)
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def negative_entropy_loss(
    logits_btv: jax.Array, mask_bt: jax.Array | None = None, *, unmasked: bool = False
) -> jax.Array:
    """Negative mean next-token entropy: the knowledge-restriction tamper loss ``L_TR``.

    Args:
        logits_btv: ``[B, T, V]`` logits.
        mask_bt: ``[B, T]`` 1 on the positions whose prediction counts (normally the batch's
            ``attention_mask``: every real input token); None counts all positions.
        unmasked: reproduce the reference implementation: mean over *all* positions, padding included,
            ignoring ``mask_bt``.

    Returns:
        A float32 scalar ``-mean(entropy)`` (in ``[-log V, 0]``).

    Example:
        >>> loss = negative_entropy_loss(jnp.zeros((1, 3, 8)), jnp.array([[1, 1, 0]]))
        >>> bool(jnp.isclose(loss, -jnp.log(8.0)))
        True
    """
    entropy = next_token_entropy(logits_btv)
    if mask_bt is not None and mask_bt.shape != entropy.shape:
        raise ValueError(f"mask {mask_bt.shape} must match the logits' [B, T] = {entropy.shape}")
    return -masked_mean(entropy, None if unmasked else mask_bt)


def next_token_entropy_from_hidden(hidden_btd: jax.Array, head_dv: jax.Array, *, chunk: int | None = None) -> jax.Array:
    """:func:`next_token_entropy` of the logits ``hidden @ head``, ``chunk`` tokens at a time (None: all at once).

    Args:
        hidden_btd: ``[B, T, D]`` final hidden states (``ModelOutput.last_hidden_state``).
        head_dv: ``[D, V]`` LM head kernel (`jaxtar.models.Model.lm_head`).
        chunk: tokens per chunk (the ``B * T`` positions are chunked across rows); None builds all the logits.

    Returns:
        ``[B, T]`` entropies in at least float32.

    Example:
        >>> h = next_token_entropy_from_hidden(jnp.ones((2, 3, 4)), jnp.zeros((4, 8)), chunk=4)
        >>> h.shape, bool(jnp.allclose(h, jnp.log(8.0)))
        ((2, 3), True)
    """
    check_chunk(chunk)
    check_head(hidden_btd, head_dv)
    if chunk is None:
        return next_token_entropy(head_logits(hidden_btd, head_dv))
    b, t, d = hidden_btd.shape
    rows = hidden_btd.reshape(b * t, d)
    return chunked_row_stats(rows, head_dv, None, chunk=chunk, entropy=True)["entropy"].reshape(b, t)


def negative_entropy_loss_from_hidden(
    hidden_btd: jax.Array,
    head_dv: jax.Array,
    mask_bt: jax.Array | None = None,
    *,
    unmasked: bool = False,
    chunk: int | None = None,
) -> jax.Array:
    """:func:`negative_entropy_loss` of the logits ``hidden @ head``, ``chunk`` tokens at a time.

    Example:
        >>> loss = negative_entropy_loss_from_hidden(jnp.ones((1, 3, 4)), jnp.zeros((4, 8)), jnp.array([[1, 1, 0]]),
        ...                                          chunk=2)
        >>> bool(jnp.isclose(loss, -jnp.log(8.0)))
        True
    """
    entropy = next_token_entropy_from_hidden(hidden_btd, head_dv, chunk=chunk)
    if mask_bt is not None and mask_bt.shape != entropy.shape:
        raise ValueError(f"mask {mask_bt.shape} must match the hidden states' [B, T] = {entropy.shape}")
    return -masked_mean(entropy, None if unmasked else mask_bt)
