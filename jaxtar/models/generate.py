"""Greedy and sampled generation for decoder ports, with a KV cache and one compiled loop.

The prompt may be left-padded (recommended; right padding works too but wastes cache slots). Positions follow
transformers' ``generate``: ``cumsum(attention_mask) - 1``, so padded and unpadded prompts give the same tokens.

Example:
    >>> from jaxtar.models import LlamaConfig, create_model
    >>> model, params = create_model(LlamaConfig.tiny(), seed=0)
    >>> ids = jnp.array([[0, 5, 6, 7], [1, 2, 3, 4]])   # the first prompt is left-padded
    >>> mask = jnp.array([[0, 1, 1, 1], [1, 1, 1, 1]])
    >>> tokens = generate(model, params, ids, mask, max_new_tokens=4)              # greedy
    >>> tokens.shape, bool((tokens[:, :4] == ids).all())
    ((2, 8), True)
    >>> key = jax.random.key(0)
    >>> tokens = generate(model, params, ids, mask, max_new_tokens=4, temperature=0.8, top_p=0.9, key=key)
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxtar.models.functional import Model, Params
from jaxtar.models.layers import causal_mask

DECODERS = ("llama", "mistral", "qwen2", "gpt2")  # ports whose module has ``forward(..., cache, cache_index, ...)``


def init_cache(model: Model, batch_size: int, length: int, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
    """An empty KV cache ``{"k", "v"}: [L, B, length, KV, hd]``."""
    c = model.config
    shape = (c.num_layers, batch_size, length, c.num_kv_heads, c.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def _sample(
    logits_bv: jax.Array, key: jax.Array, temperature: float, top_k: int | None, top_p: float | None
) -> jax.Array:
    if temperature == 0.0:
        return jnp.argmax(logits_bv, axis=-1)
    logits = logits_bv / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # smallest set whose probability reaches top_p: keep tokens whose preceding mass is < top_p
        cutoff_index = jnp.sum(cumulative - jax.nn.softmax(sorted_logits, axis=-1) < top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_index - 1, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


@functools.partial(
    jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k", "top_p", "eos_ids", "pad_id", "dtype")
)
def _generate(model, params, input_ids, attention_mask, key, *, max_new_tokens, temperature, top_k, top_p, eos_ids,
              pad_id, dtype):  # fmt: skip
    module = model.module(params)
    b, t0 = input_ids.shape
    total = t0 + max_new_tokens
    window = getattr(model.config, "sliding_window", None)
    key_valid = jnp.concatenate([attention_mask.astype(bool), jnp.ones((b, max_new_tokens), bool)], axis=1)
    slots = jnp.arange(total)
    positions = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0)
    cache = init_cache(model, b, total, dtype or params["embed"]["embedding"].dtype)
    allowed = causal_mask(jnp.broadcast_to(jnp.arange(t0), (b, t0)), slots, key_valid, window)
    out, cache = module.forward(input_ids, positions, allowed, cache, 0, False, None, None, dtype)
    next_pos = jnp.sum(attention_mask, axis=1)  # position of the first generated token
    eos = jnp.asarray(eos_ids if eos_ids else (-1,))

    def step(carry, i):
        logits, cache, done, key = carry
        key, sub = jax.random.split(key)
        token = _sample(logits, sub, temperature, top_k, top_p)
        token = jnp.where(done, pad_id, token)
        done = done | jnp.isin(token, eos)
        slot = t0 + i
        allowed = causal_mask(jnp.full((b, 1), slot), slots, key_valid, window)
        position = (next_pos + i)[:, None]
        out, cache = module.forward(token[:, None], position, allowed, cache, slot, False, None, None, dtype)
        return (out.logits[:, -1], cache, done, key), token

    init = (out.logits[:, -1], cache, jnp.zeros((b,), bool), key)
    _, tokens = jax.lax.scan(step, init, jnp.arange(max_new_tokens))
    return jnp.concatenate([input_ids, tokens.T.astype(input_ids.dtype)], axis=1)


def generate(
    model: Model,
    params: Params,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    key: jax.Array | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    dtype: Any = None,
) -> jax.Array:
    """Prompt followed by ``max_new_tokens`` generated tokens ``[B, T + max_new_tokens]``.

    ``temperature=0`` is greedy; otherwise samples (optionally top-k / nucleus) with ``key``. After a row emits an
    end-of-sequence token it is filled with ``pad_token_id``.
    """
    if model.config.model_type not in DECODERS:
        raise ValueError(f"generation needs a decoder ({', '.join(DECODERS)}), not {model.config.model_type!r}")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    if temperature > 0 and key is None:
        raise ValueError("sampling (temperature > 0) needs a PRNG key")
    input_ids = jnp.asarray(input_ids)
    mask = jnp.ones_like(input_ids) if attention_mask is None else jnp.asarray(attention_mask)
    eos = model.config.eos_token_id if eos_token_id is None else eos_token_id
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
    pad = pad_token_id if pad_token_id is not None else (model.config.pad_token_id or (eos_ids[0] if eos_ids else 0))
    return _generate(
        model, params, input_ids, mask, jax.random.key(0) if key is None else key,
        max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=top_k, top_p=top_p, eos_ids=eos_ids,
        pad_id=int(pad), dtype=dtype,
    )  # fmt: skip
