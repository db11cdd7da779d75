"""Pure building blocks shared by the ports: norms, linear layers (with LoRA), RoPE and attention.

Weights are plain arrays; a linear layer is a dict ``{"kernel": [in, out], "bias": [out]?}`` (kernel in
``x @ kernel`` layout, i.e. the transpose of torch's ``out x in``).

Attention has three implementations (`ATTENTION_IMPLS`, a model config's ``attention_impl``): ``reference``, the
hand-written softmax attention every port has always used (the default: the parity tests' numbers, float64 kept);
``xla``, `jax.nn.dot_product_attention` lowered to plain XLA ops (the same values and first- and second-order
gradients to float32 rounding, tests/models/test_attention_impl.py; its softmax runs in float32 even for float64
inputs); ``cudnn``, the same call with cuDNN's fused kernel (NVIDIA GPUs, bfloat16 / float16 compute only). cuDNN's
kernel has no second derivative, so a second-order meta-gradient estimator (`SECOND_ORDER_KINDS`) runs ``xla``
instead: `resolve_attention_impl` / `with_attention_impl` pick the implementation and log the reason once.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

MASK_VALUE = float(jnp.finfo(jnp.float32).min)  # what transformers adds to masked scores
ATTENTION_IMPLS = ("reference", "xla", "cudnn")
# Estimators that differentiate through the attack's own gradients (double backward or forward-over-reverse);
# `truncated` with T = 0 is first order (docs/meta-gradients.md#estimators).
SECOND_ORDER_KINDS = ("exact", "remat", "mixed", "truncated")
_log = logging.getLogger("jaxtar.models")
_LOGGED: set[str] = set()

# transformers' activation names (ACT2FN) -> jax functions. "gelu" is the exact erf form; the "new"/"tanh" ones are
# the tanh approximation, which is what GPT-2 uses.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def upcast_dtype(dtype) -> jnp.dtype:
    """The dtype numerically sensitive ops run in: float32 for bf16/f16/f32 inputs, float64 stays float64.

    Example:
        >>> upcast_dtype(jnp.bfloat16), upcast_dtype(jnp.float32)
        (dtype('float32'), dtype('float32'))
    """
    return jnp.promote_types(dtype, jnp.float32)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """Llama-style RMSNorm, computed in float32 (float64 stays) and cast back (as transformers does)."""
    x32 = x.astype(upcast_dtype(x.dtype))
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * x32.astype(x.dtype)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """LayerNorm over the last axis in float32 (float64 stays), cast back to the input dtype."""
    x32 = x.astype(upcast_dtype(x.dtype))
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    return (y * scale.astype(x32.dtype) + bias.astype(x32.dtype)).astype(x.dtype)


def matmul(x: jax.Array, w: jax.Array, **dot_kwargs: Any) -> jax.Array:
    """``x @ w`` over the last axis of ``x``, computed as one rank-2 dot (leading axes flattened into rows).

    The same contraction as ``jnp.dot(x, w)`` (equal up to float rounding order); the rank-2 form is faster under
    second-order autodiff on XLA's CPU backend, whose reverse-over-reverse code then needs fewer transposed copies
    (exact meta-gradient of the d=256 benchmark Llama: 0.65-0.75x the time at K=4 and 16, docs/benchmarks.md).

    Example:
        >>> matmul(jnp.ones((2, 3, 4)), jnp.ones((4, 5))).shape
        (2, 3, 5)
    """
    if x.ndim == 2:
        return jnp.dot(x, w, **dot_kwargs)
    y = jnp.dot(x.reshape(-1, x.shape[-1]), w, **dot_kwargs)
    return y.reshape(*x.shape[:-1], w.shape[-1])


def linear(
    x: jax.Array,
    p: dict[str, jax.Array],
    lora: dict[str, jax.Array] | None = None,
    *,
    lora_scale: float = 1.0,
    lora_dropout: float = 0.0,
    dropout_key: jax.Array | None = None,
) -> jax.Array:
    """``x @ kernel + bias``, plus ``scale * (dropout(x) @ a) @ b`` when a LoRA adapter is given."""
    y = matmul(x, p["kernel"].astype(x.dtype))
    if "bias" in p:
        y = y + p["bias"].astype(x.dtype)
    if lora is not None:
        h = x
        if lora_dropout > 0.0 and dropout_key is not None:
            keep = jax.random.bernoulli(dropout_key, 1.0 - lora_dropout, x.shape)
            h = jnp.where(keep, x / (1.0 - lora_dropout), 0.0).astype(x.dtype)
        y = y + lora_scale * matmul(matmul(h, lora["a"].astype(x.dtype)), lora["b"].astype(x.dtype))
    return y


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None = None) -> jax.Array:
    """Inverse RoPE frequencies ``[head_dim // 2]``; supports ``linear`` and ``llama3`` scaling."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if not scaling:
        return inv_freq
    kind = scaling["rope_type"]
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = jnp.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return jnp.where(medium, smoothed, scaled)
    raise ValueError(f"unsupported RoPE scaling type {kind!r} (supported: default, linear, llama3)")


def apply_rope(x_bthd: jax.Array, position_ids_bt: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotary embedding in transformers' rotate-half convention, computed in float32."""
    angles = position_ids_bt[..., None].astype(jnp.float32) * inv_freq  # [B, T, hd/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, hd]
    x32 = x_bthd.astype(upcast_dtype(x_bthd.dtype))
    half = x32.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x_bthd.dtype)


def attention(
    q_bthd: jax.Array,
    k_bskd: jax.Array,
    v_bskd: jax.Array,
    allowed_bts: jax.Array,
    *,
    scale: float | jax.Array | None = None,
    impl: str = "reference",
    causal: bool = False,
) -> jax.Array:
    """Multi-head attention with grouped K/V heads (MHA, GQA and MQA); softmax in float32 (float64 stays).

    Args:
        q_bthd: queries ``[B, T, H, hd]``.
        k_bskd, v_bskd: keys and values ``[B, S, KV, hd]`` with ``H % KV == 0``.
        allowed_bts: boolean ``[B, T, S]``: may query ``t`` attend to key ``s``.
        scale: score scale, default ``hd ** -0.5``.
        impl: ``reference``, ``xla`` or ``cudnn`` (see the module docstring).
        causal: ``allowed_bts`` includes a causal mask: lets ``cudnn`` skip the future when ``T == S``.

    Returns:
        ``[B, T, H * hd]``.
    """
    b, t, h, hd = q_bthd.shape
    kv = k_bskd.shape[2]
    scale = hd**-0.5 if scale is None else scale
    if impl != "reference":
        return _library_attention(q_bthd, k_bskd, v_bskd, allowed_bts, scale, impl, causal)
    q = q_bthd.reshape(b, t, kv, h // kv, hd)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k_bskd, preferred_element_type=upcast_dtype(q.dtype)) * scale
    scores = jnp.where(allowed_bts[:, None, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_bskd.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v_bskd)
    return out.reshape(b, t, h * hd)


def _library_attention(q, k, v, allowed_bts, scale, impl, causal) -> jax.Array:
    """`jax.nn.dot_product_attention` with ``implementation=impl`` and the ``[B, 1, T, S]`` mask."""
    b, t, h, hd = q.shape
    check_attention_impl(impl)
    is_causal = False
    if impl == "cudnn":
        _check_cudnn(q.dtype)
        if not isinstance(scale, (int, float)):  # a traced scale (GPT-2's per-layer one): cuDNN takes a constant
            q, scale = q * jnp.asarray(scale, q.dtype), 1.0
        is_causal = causal and t == k.shape[1]  # the mask still applies; this lets the kernel skip the future
    out = jax.nn.dot_product_attention(
        q, k, v, mask=allowed_bts[:, None], scale=scale, is_causal=is_causal, implementation=impl
    )
    return out.reshape(b, t, h * hd)


def check_attention_impl(impl: str) -> None:
    """Refuses a name outside `ATTENTION_IMPLS` (ValueError naming them).

    Example:
        >>> check_attention_impl("flash")
        Traceback (most recent call last):
        ...
        ValueError: attention_impl must be one of ('reference', 'xla', 'cudnn'), got 'flash'
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")


def _check_cudnn(dtype: Any, platform: str | None = None) -> None:
    platform = platform or jax.default_backend()
    if platform != "gpu":
        raise ValueError(
            f"attention_impl 'cudnn' needs an NVIDIA GPU (cuDNN's fused attention); this backend is {platform!r}: "
            "use 'xla' (jax.nn.dot_product_attention without cuDNN) or 'reference'"
        )
    if dtype is not None and jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise ValueError(
            f"attention_impl 'cudnn' needs bfloat16 or float16 compute (cuDNN's kernel), got {jnp.dtype(dtype)}: "
            "set the compute dtype to bfloat16, or use 'xla'"
        )


def needs_second_order(estimator: Any) -> bool:
    """Does ``estimator`` (an `Estimator`, or its kind as text) differentiate through the attack's gradients?

    Example:
        >>> needs_second_order("exact"), needs_second_order("tar")
        (True, False)
    """
    kind = getattr(estimator, "kind", estimator)
    if kind == "truncated" and getattr(estimator, "truncation", None) == 0:
        return False
    return kind in SECOND_ORDER_KINDS


def resolve_attention_impl(impl: str, estimator: Any = None, *, platform: str | None = None) -> str:
    """The attention implementation a run uses: ``impl``, except ``cudnn`` under a second-order ``estimator``
    (`needs_second_order`), which runs ``xla`` (cuDNN's kernel has no double backward; logged once per reason).

    Raises:
        ValueError: an unknown name, or ``cudnn`` where there is no GPU (``platform``: default JAX's backend).

    Example:
        >>> resolve_attention_impl("xla", "exact"), resolve_attention_impl("cudnn", "exact", platform="gpu")
        ('xla', 'xla')
    """
    check_attention_impl(impl)
    if impl != "cudnn":
        return impl
    _check_cudnn(None, platform)
    if needs_second_order(estimator):
        kind = getattr(estimator, "kind", estimator)
        _log_once(
            f"attention_impl 'cudnn' -> 'xla': the {kind!r} meta-gradient estimator differentiates through the "
            "attack's gradients, and cuDNN's fused attention has no second derivative"
        )
        return "xla"
    return impl


def with_attention_impl(model: Any, impl: str, estimator: Any = None, *, platform: str | None = None) -> Any:
    """``model`` (a `jaxtar.models.Model`) running attention with `resolve_attention_impl` ``(impl, estimator)``;
    the parameters are unchanged, so the same params dict works with either.

    Example:
        >>> from jaxtar.models import LlamaConfig, model_for_config
        >>> with_attention_impl(model_for_config(LlamaConfig.tiny()), "xla").config.attention_impl
        'xla'
    """
    from jaxtar.models.functional import model_for_config

    resolved = resolve_attention_impl(impl, estimator, platform=platform)
    if getattr(model.config, "attention_impl", "reference") == resolved:
        return model
    return model_for_config(dataclasses.replace(model.config, attention_impl=resolved))


def _log_once(message: str) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        _log.warning(message)


def causal_mask(
    query_pos_bt: jax.Array,
    key_pos_s: jax.Array,
    key_valid_bs: jax.Array,
    sliding_window: int | None = None,
) -> jax.Array:
    """``[B, T, S]`` mask: key not in the future, not padding, and within the sliding window if any."""
    q = query_pos_bt[:, :, None]
    k = key_pos_s[None, None, :]
    allowed = (k <= q) & key_valid_bs[:, None, :]
    if sliding_window is not None:
        allowed = allowed & (q - k < sliding_window)
    return allowed
