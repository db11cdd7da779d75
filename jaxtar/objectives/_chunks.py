"""Vocabulary-sized statistics of final hidden states under the LM head, ``chunk`` tokens at a time.

An LM loss on ``[B, T, D]`` hidden states needs ``[B, T, V]`` logits; at Llama-3's V = 128k they dominate memory,
twice (the forward's logits and the backward's softmax). Here the rows ``[N, D]`` (N = B * T tokens) are split into
chunks of ``chunk`` rows; each chunk's logits ``[chunk, V]`` are made by the head matmul, reduced to per-row numbers
(the target's log-probability, the entropy) and dropped. Each chunk runs under `jax.checkpoint` inside `lax.map`,
so the backward pass recomputes one chunk's logits at a time and keeps only the chunk's inputs: the full logits
exist neither in the forward nor in the backward, at any order of differentiation (``grad`` of ``grad``, ``jvp`` of
``grad``). Per row the arithmetic is the unchunked one (``logit[target] - logsumexp``, ``-sum(p log p)`` of the
log-softmax); only the matmul's summation order may differ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtar.objectives._precision import at_least_f32


def head_logits(hidden_nd: jax.Array, head_dv: jax.Array) -> jax.Array:
    """``hidden @ head`` as the models compute their logits: the head cast to the hidden dtype, accumulated in at
    least float32 (float64 stays float64).

    Example:
        >>> head_logits(jnp.ones((2, 3, 4), jnp.bfloat16), jnp.ones((4, 5))).dtype
        dtype('float32')
    """
    hidden_nd = jnp.asarray(hidden_nd)
    out_dtype = jnp.promote_types(hidden_nd.dtype, jnp.float32)
    lead, d = hidden_nd.shape[:-1], hidden_nd.shape[-1]
    logits = jnp.dot(hidden_nd.reshape(-1, d), head_dv.astype(hidden_nd.dtype), preferred_element_type=out_dtype)
    return logits.reshape(*lead, head_dv.shape[-1])


def _batched_head_logits(x_cd: jax.Array, head_dv: jax.Array) -> jax.Array:
    """`head_logits` of one chunk, written as a dot with a (size-1) batch dimension.

    A `jax.checkpoint` policy of an enclosing function reaches into nested checkpoints and scans: under
    ``dots_with_no_batch_dims_saveable`` (the ``exact`` meta-gradient's `EXACT_POLICY`) a plain 2-D dot here would
    be stored for every chunk (its ``[c, V]`` logits, and the ``[D, V]`` head-gradient dots of the backward pass),
    which gives back all the memory chunking saves. With a batch dimension none of these dots is saveable under
    that policy, so each chunk's logits are recomputed (one more ``[c, D] x [D, V]`` matmul per chunk).
    """
    out_dtype = jnp.promote_types(x_cd.dtype, jnp.float32)
    dims = (((2,), (1,)), ((0,), (0,)))
    logits = jax.lax.dot_general(x_cd[None], head_dv.astype(x_cd.dtype)[None], dims, preferred_element_type=out_dtype)
    return logits[0]


def check_chunk(chunk: int | None) -> None:
    """Refuses a chunk size that is not None or a positive int."""
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be None (unchunked) or a positive number of tokens, got {chunk!r}")


def check_head(hidden_btd: jax.Array, head_dv: jax.Array) -> None:
    if hidden_btd.ndim != 3:
        raise ValueError(f"hidden states must be [B, T, D], got shape {hidden_btd.shape}")
    if head_dv.ndim != 2 or head_dv.shape[0] != hidden_btd.shape[-1]:
        raise ValueError(f"the LM head must be [D, V] with D = {hidden_btd.shape[-1]}, got shape {head_dv.shape}")


def _row_stats(logits: jax.Array, targets: jax.Array | None, entropy: bool) -> dict[str, jax.Array]:
    """Per-row statistics of ``[N, V]`` logits, as `next_token_log_probs` / `next_token_entropy` compute them."""
    logits = at_least_f32(logits)
    out = {}
    if targets is not None:
        target_logits = jnp.take_along_axis(logits, targets[:, None].astype(jnp.int32), axis=-1)[:, 0]
        out["log_prob"] = target_logits - jax.nn.logsumexp(logits, axis=-1)
    if entropy:
        log_p = jax.nn.log_softmax(logits, axis=-1)
        out["entropy"] = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
    return out


def chunked_row_stats(
    hidden_nd: jax.Array,
    head_dv: jax.Array,
    targets_n: jax.Array | None,
    *,
    chunk: int,
    entropy: bool = False,
) -> dict[str, jax.Array]:
    """``log_prob`` (when ``targets_n`` is given) and ``entropy`` (when asked) of every row of ``hidden @ head``,
    ``chunk`` rows at a time (the last chunk zero-padded, its padding dropped).

    Args:
        hidden_nd: ``[N, D]`` hidden states (any float dtype).
        head_dv: ``[D, V]`` LM head kernel.
        targets_n: ``[N]`` int target ids, or None.
        chunk: rows per chunk (>= 1; more than N means one chunk).
        entropy: also return the entropy of every row's softmax.

    Returns:
        ``{"log_prob": [N], "entropy": [N]}`` (the keys asked for), in at least float32.

    Example:
        >>> h, w = jnp.ones((5, 2)), jnp.zeros((2, 4))
        >>> out = chunked_row_stats(h, w, jnp.zeros(5, jnp.int32), chunk=2, entropy=True)
        >>> bool(jnp.allclose(out["log_prob"], -jnp.log(4.0))), bool(jnp.allclose(out["entropy"], jnp.log(4.0)))
        (True, True)
    """
    check_chunk(chunk)
    n, d = hidden_nd.shape
    c = min(chunk, max(n, 1))
    num = -(-n // c)
    pad = num * c - n
    x = jnp.pad(hidden_nd, ((0, pad), (0, 0))).reshape(num, c, d)
    t = None if targets_n is None else jnp.pad(targets_n, (0, pad)).reshape(num, c)

    @jax.checkpoint  # keep only the chunk's inputs; its [c, V] logits are recomputed in the backward pass
    def one_chunk(head, x_cd, t_c):
        return _row_stats(_batched_head_logits(x_cd, head), t_c, entropy)

    out = jax.lax.map(lambda xt: one_chunk(head_dv, *xt), (x, t))
    return {k: v.reshape(num * c)[:n] for k, v in out.items()}
