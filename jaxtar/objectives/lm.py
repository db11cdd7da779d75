"""Next-token language-modelling objectives: cross-entropy and per-sequence log-probabilities.

Conventions shared by every objective in this package:

- ``logits_btv`` are the model's float logits ``[B, T, V]``; position ``t`` predicts token ``t + 1``.
- ``labels_bt`` are the input token ids ``[B, T]`` (the shift happens here, not in the data).
- ``loss_mask_bt`` marks *target* tokens ``[B, T]``: ``loss_mask[b, t] = 1`` means token ``t`` is predicted
  and counted. Position 0 is never a target. Padding must be 0; for prompt/response data only the response
  tokens are 1. ``None`` counts every target token.
- Means are taken over unmasked elements; an all-masked input gives 0, never NaN.

The ``*_from_hidden`` variants take the final hidden states ``hidden_btd`` ``[B, T, D]`` and the LM head kernel
``head_dv`` ``[D, V]`` (`jaxtar.models.Model.lm_head`) instead of logits. With ``chunk=None`` they build the logits
as the model does and call the logits version; with ``chunk=c`` they never hold more than ``c`` tokens' logits
(forward and backward, any order; see :mod:`jaxtar.objectives._chunks`): the same values and gradients to float
rounding, for a fraction of the memory at a large vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtar.objectives._chunks import check_chunk, check_head, chunked_row_stats, head_logits
from jaxtar.objectives._precision import at_least_f32


def masked_mean(
    values: jax.Array, mask: jax.Array | None = None, axis: int | tuple[int, ...] | None = None
) -> jax.Array:
    """Mean of ``values`` over the elements where ``mask`` is non-zero (all elements when ``mask`` is None).

    Args:
        values: any float array.
        mask: an array broadcastable to ``values`` (bool or 0/1); weights are ``mask`` cast to float.
        axis: axes to reduce (all when None).

    Returns:
        ``sum(values * mask) / max(sum(mask), 1)`` reduced over ``axis``; 0 where nothing is unmasked.

    Example:
        >>> masked_mean(jnp.array([1.0, 2.0, 3.0]), jnp.array([1, 1, 0]))
        Array(1.5, dtype=float32)
    """
    values = jnp.asarray(values)
    if mask is None:
        return jnp.mean(values, axis=axis)
    weights = jnp.broadcast_to(jnp.asarray(mask).astype(values.dtype), values.shape)
    total = jnp.sum(values * weights, axis=axis)
    count = jnp.sum(weights, axis=axis)
    return total / jnp.maximum(count, 1.0)


def _check_shapes(logits_btv: jax.Array, labels_bt: jax.Array, mask_bt: jax.Array | None) -> None:
    if logits_btv.ndim != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {logits_btv.shape}")
    if labels_bt.shape != logits_btv.shape[:2]:
        raise ValueError(f"labels {labels_bt.shape} must match the logits' [B, T] = {logits_btv.shape[:2]}")
    if mask_bt is not None and mask_bt.shape != labels_bt.shape:
        raise ValueError(f"mask {mask_bt.shape} must match labels {labels_bt.shape}")


def next_token_log_probs(logits_btv: jax.Array, labels_bt: jax.Array) -> jax.Array:
    """Log-probability of every next token: ``out[b, t] = log p(labels[b, t + 1] | labels[b, :t + 1])``.

    Computed in at least float32 (float64 stays float64) as ``logit[target] - logsumexp(logits)`` (no
    ``[B, T, V]`` log-softmax is kept).

    Args:
        logits_btv: ``[B, T, V]`` logits.
        labels_bt: ``[B, T]`` token ids.

    Returns:
        ``[B, T - 1]`` float32 log-probabilities.

    Example:
        >>> lp = next_token_log_probs(jnp.zeros((1, 3, 4)), jnp.array([[0, 1, 2]]))
        >>> bool(jnp.allclose(lp, jnp.log(0.25)))
        True
    """
    _check_shapes(logits_btv, labels_bt, None)
    logits = at_least_f32(logits_btv[:, :-1])
    targets = labels_bt[:, 1:].astype(jnp.int32)
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return target_logits - jax.nn.logsumexp(logits, axis=-1)


def next_token_cross_entropy(
    logits_btv: jax.Array, labels_bt: jax.Array, loss_mask_bt: jax.Array | None = None
) -> jax.Array:
    """Shifted next-token cross-entropy, averaged over the unmasked target tokens of the whole batch.

    Args:
        logits_btv: ``[B, T, V]`` logits.
        labels_bt: ``[B, T]`` token ids (inputs; shifted internally).
        loss_mask_bt: ``[B, T]`` target mask (see the module docstring); None counts every target.

    Returns:
        A float32 scalar: ``-sum(mask * log p) / sum(mask)`` over positions ``1..T-1``.

    Example:
        >>> ce = next_token_cross_entropy(jnp.zeros((2, 5, 8)), jnp.ones((2, 5), jnp.int32))
        >>> bool(jnp.isclose(ce, jnp.log(8.0)))
        True
    """
    _check_shapes(logits_btv, labels_bt, loss_mask_bt)
    nll = -next_token_log_probs(logits_btv, labels_bt)
    mask = None if loss_mask_bt is None else loss_mask_bt[:, 1:]
    return masked_mean(nll, mask)


def sequence_log_probs(logits_btv: jax.Array, labels_bt: jax.Array, loss_mask_bt: jax.Array) -> jax.Array:
    """Per-example sum of next-token log-probabilities over the masked (response) tokens, as DPO needs.

    Args:
        logits_btv: ``[B, T, V]`` logits.
        labels_bt: ``[B, T]`` token ids.
        loss_mask_bt: ``[B, T]`` 1 on the response tokens to score (targets), 0 on prompt and padding.

    Returns:
        ``[B]`` float32 sums ``sum_t mask[b, t] * log p(labels[b, t] | labels[b, :t])``.

    Example:
        >>> s = sequence_log_probs(jnp.zeros((1, 4, 2)), jnp.zeros((1, 4), jnp.int32), jnp.array([[0, 0, 1, 1]]))
        >>> bool(jnp.isclose(s[0], 2 * jnp.log(0.5)))
        True
    """
    _check_shapes(logits_btv, labels_bt, loss_mask_bt)
    log_probs = next_token_log_probs(logits_btv, labels_bt)
    return jnp.sum(log_probs * loss_mask_bt[:, 1:].astype(log_probs.dtype), axis=-1)


def batch_loss_mask(batch: dict[str, jax.Array]) -> jax.Array | None:
    """The target mask of a batch dict: ``loss_mask`` if present, else ``attention_mask``, else None.

    Example:
        >>> batch_loss_mask({"input_ids": jnp.zeros((1, 3)), "attention_mask": jnp.ones((1, 3))}).shape
        (1, 3)
    """
    if "loss_mask" in batch:
        return batch["loss_mask"]
    return batch.get("attention_mask")


def batch_cross_entropy(logits_btv: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
    """:func:`next_token_cross_entropy` on a batch dict from :mod:`jaxtar.data.batching`.

    Uses ``batch["input_ids"]`` as labels and :func:`batch_loss_mask` as the target mask.

    Example:
        >>> batch = {"input_ids": jnp.ones((2, 5), jnp.int32), "loss_mask": jnp.ones((2, 5), jnp.int32)}
        >>> bool(jnp.isclose(batch_cross_entropy(jnp.zeros((2, 5, 8)), batch), jnp.log(8.0)))
        True
    """
    return next_token_cross_entropy(logits_btv, batch["input_ids"], batch_loss_mask(batch))


def next_token_log_probs_from_hidden(
    hidden_btd: jax.Array, head_dv: jax.Array, labels_bt: jax.Array, *, chunk: int | None = None
) -> jax.Array:
    """:func:`next_token_log_probs` of the logits ``hidden @ head``, ``chunk`` tokens at a time (None: all at once).

    Args:
        hidden_btd: ``[B, T, D]`` final hidden states (after the final norm: ``ModelOutput.last_hidden_state``).
        head_dv: ``[D, V]`` LM head kernel (`jaxtar.models.Model.lm_head`).
        labels_bt: ``[B, T]`` token ids.
        chunk: tokens per chunk (the ``B * (T - 1)`` predicting positions are chunked across rows); None builds
            the whole ``[B, T, V]`` logits.

    Returns:
        ``[B, T - 1]`` log-probabilities in at least float32.

    Example:
        >>> h, w = jnp.ones((2, 4, 3)), jnp.zeros((3, 8))
        >>> lp = next_token_log_probs_from_hidden(h, w, jnp.zeros((2, 4), jnp.int32), chunk=5)
        >>> lp.shape, bool(jnp.allclose(lp, -jnp.log(8.0)))
        ((2, 3), True)
    """
    check_chunk(chunk)
    check_head(hidden_btd, head_dv)
    if chunk is None:
        return next_token_log_probs(head_logits(hidden_btd, head_dv), labels_bt)
    _check_shapes(hidden_btd, labels_bt, None)
    b, t, d = hidden_btd.shape
    rows = hidden_btd[:, :-1].reshape(b * (t - 1), d)
    targets = labels_bt[:, 1:].reshape(b * (t - 1))
    return chunked_row_stats(rows, head_dv, targets, chunk=chunk)["log_prob"].reshape(b, t - 1)


def next_token_cross_entropy_from_hidden(
    hidden_btd: jax.Array,
    head_dv: jax.Array,
    labels_bt: jax.Array,
    loss_mask_bt: jax.Array | None = None,
    *,
    chunk: int | None = None,
) -> jax.Array:
    """:func:`next_token_cross_entropy` of the logits ``hidden @ head``, ``chunk`` tokens at a time.

    Example:
        >>> ce = next_token_cross_entropy_from_hidden(jnp.ones((2, 5, 3)), jnp.zeros((3, 8)),
        ...                                           jnp.ones((2, 5), jnp.int32), chunk=3)
        >>> bool(jnp.isclose(ce, jnp.log(8.0)))
        True
    """
    check_head(hidden_btd, head_dv)
    _check_shapes(hidden_btd, labels_bt, loss_mask_bt)
    nll = -next_token_log_probs_from_hidden(hidden_btd, head_dv, labels_bt, chunk=chunk)
    return masked_mean(nll, None if loss_mask_bt is None else loss_mask_bt[:, 1:])


def sequence_log_probs_from_hidden(
    hidden_btd: jax.Array,
    head_dv: jax.Array,
    labels_bt: jax.Array,
    loss_mask_bt: jax.Array,
    *,
    chunk: int | None = None,
) -> jax.Array:
    """:func:`sequence_log_probs` of the logits ``hidden @ head``, ``chunk`` tokens at a time.

    Example:
        >>> s = sequence_log_probs_from_hidden(jnp.ones((1, 4, 3)), jnp.zeros((3, 2)), jnp.zeros((1, 4), jnp.int32),
        ...                                    jnp.array([[0, 0, 1, 1]]), chunk=2)
        >>> bool(jnp.isclose(s[0], 2 * jnp.log(0.5)))
        True
    """
    check_head(hidden_btd, head_dv)
    _check_shapes(hidden_btd, labels_bt, loss_mask_bt)
    log_probs = next_token_log_probs_from_hidden(hidden_btd, head_dv, labels_bt, chunk=chunk)
    return jnp.sum(log_probs * loss_mask_bt[:, 1:].astype(log_probs.dtype), axis=-1)


def batch_cross_entropy_from_hidden(
    hidden_btd: jax.Array, head_dv: jax.Array, batch: dict[str, jax.Array], *, chunk: int | None = None
) -> jax.Array:
    """:func:`batch_cross_entropy` of the logits ``hidden @ head``, ``chunk`` tokens at a time.

    Example:
        >>> from jaxtar.models import LlamaConfig, create_model
        >>> model, params = create_model(LlamaConfig.tiny(num_layers=1))
        >>> batch = {"input_ids": jnp.ones((2, 6), jnp.int32), "attention_mask": jnp.ones((2, 6), jnp.int32)}
        >>> out = model.apply(params, batch["input_ids"], batch["attention_mask"])
        >>> chunked = batch_cross_entropy_from_hidden(out.last_hidden_state, model.lm_head(params), batch, chunk=4)
        >>> bool(jnp.isclose(chunked, batch_cross_entropy(out.logits, batch), rtol=1e-6))
        True
    """
    return next_token_cross_entropy_from_hidden(
        hidden_btd, head_dv, batch["input_ids"], batch_loss_mask(batch), chunk=chunk
    )
