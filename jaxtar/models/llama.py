"""Decoder-only transformers of the Llama family: Llama 2/3 (incl. ``llama3`` RoPE scaling), Mistral, Qwen2, SmolLM.

MHA, GQA and MQA; tied or untied embeddings; optional q/k/v(/o) biases; sliding-window attention. Layers are stored
stacked on a leading axis and run with ``lax.scan``, so tracing cost does not grow with depth — a meta-gradient traces
the model once per unrolled step.

Example:
    >>> from jaxtar.models import LlamaConfig, create_model
    >>> model, params = create_model(LlamaConfig.tiny(), seed=0)
    >>> model.apply(params, jnp.array([[1, 2, 3]])).logits.shape
    (1, 3, 256)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtar.models.functional import ModelOutput, lm_head_kernel
from jaxtar.models.layers import (
    apply_rope,
    attention,
    causal_mask,
    check_attention_impl,
    linear,
    matmul,
    rms_norm,
    rope_inv_freq,
    upcast_dtype,
)
from jaxtar.models.lora import LoraParams
from jaxtar.models.modules import RMSNormParams, StackedLinear

DECODER_TYPES = ("llama", "mistral", "qwen2")
_PROJ_IDS = {n: i for i, n in enumerate(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))}


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Architecture of a Llama-family decoder (our field names; ``llama_hf.config_from_hf`` maps transformers')."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "linear"|"llama3", ...}
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2, and Llama with attention_bias
    o_bias: bool = False  # Llama with attention_bias
    sliding_window: int | None = None  # Mistral
    initializer_range: float = 0.02
    model_type: str = "llama"
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    attention_impl: str = "reference"  # reference | xla | cudnn (jaxtar.models.layers; not part of the checkpoint)

    def __post_init__(self) -> None:
        check_attention_impl(self.attention_impl)
        if self.model_type not in DECODER_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not a Llama-family decoder {DECODER_TYPES}")
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.rope_scaling is not None:
            rope_inv_freq(self.head_dim, self.rope_theta, self.rope_scaling)  # validates the type

    @staticmethod
    def module_class() -> type[nnx.Module]:
        return Llama

    @classmethod
    def tiny(cls, **overrides: Any) -> LlamaConfig:
        """A small seeded test config: 2 layers, d=64, GQA 4/2 heads, vocab 256."""
        fields = dict(
            vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
            max_position_embeddings=128,
        )  # fmt: skip
        return cls(**{**fields, **overrides})

    @classmethod
    def smollm2_135m(cls, **overrides: Any) -> LlamaConfig:
        """The SmolLM2-135M architecture (30 layers, d=576, 9/3 heads, tied embeddings)."""
        fields = dict(
            vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9, num_kv_heads=3,
            rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True, bos_token_id=1,
            eos_token_id=2, pad_token_id=2,
        )  # fmt: skip
        return cls(**{**fields, **overrides})


class Llama(nnx.Module):
    """The decoder. Call it through ``Model.apply`` (pure) rather than directly."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        n, d, std = c.num_layers, c.hidden_size, c.initializer_range
        q_dim, kv_dim = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        self.embed = nnx.Dict(embedding=nnx.Param(std * jax.random.normal(rngs.params(), (c.vocab_size, d))))
        self.layers = nnx.Dict(
            attn_norm=RMSNormParams((n, d)),
            q_proj=StackedLinear(n, d, q_dim, std, rngs, bias=c.qkv_bias),
            k_proj=StackedLinear(n, d, kv_dim, std, rngs, bias=c.qkv_bias),
            v_proj=StackedLinear(n, d, kv_dim, std, rngs, bias=c.qkv_bias),
            o_proj=StackedLinear(n, q_dim, d, std, rngs, bias=c.o_bias),
            mlp_norm=RMSNormParams((n, d)),
            gate_proj=StackedLinear(n, d, c.intermediate_size, std, rngs, bias=False),
            up_proj=StackedLinear(n, d, c.intermediate_size, std, rngs, bias=False),
            down_proj=StackedLinear(n, c.intermediate_size, d, std, rngs, bias=False),
        )
        self.final_norm = RMSNormParams((d,))
        if not c.tie_word_embeddings:
            self.lm_head = nnx.Dict(kernel=nnx.Param(std * jax.random.normal(rngs.params(), (d, c.vocab_size))))

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        position_ids: jax.Array | None = None,
        output_hidden_states: bool = False,
        lora: LoraParams | None = None,
        lora_rng: jax.Array | None = None,
        dtype: Any = None,
    ) -> ModelOutput:
        b, t = input_ids.shape
        mask = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
        if position_ids is None:  # transformers' default: 0..T-1 whatever the padding
            position_ids = jnp.broadcast_to(jnp.arange(t), (b, t))
        allowed = causal_mask(jnp.broadcast_to(jnp.arange(t), (b, t)), jnp.arange(t), mask, self.config.sliding_window)
        out, _ = self.forward(input_ids, position_ids, allowed, None, 0, output_hidden_states, lora, lora_rng, dtype)
        return out

    def forward(self, input_ids, position_ids, allowed_bts, cache, cache_index, output_hidden_states, lora, lora_rng,
                dtype):  # fmt: skip
        """Shared by ``__call__`` and cached decoding. ``cache`` is ``{"k", "v"}: [L, B, S, KV, hd]`` or ``None``."""
        c = self.config
        params = nnx.state(self, nnx.Param).to_pure_dict()
        dtype = dtype or params["embed"]["embedding"].dtype
        h = params["embed"]["embedding"][input_ids].astype(dtype)
        inv_freq = rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling)
        b, t = input_ids.shape
        lora_weights = lora.weights if lora is not None else None

        def block(h, xs):
            lp, lw, idx, layer_cache = xs

            def proj(x, name):
                key = (
                    None if lora_rng is None else jax.random.fold_in(jax.random.fold_in(lora_rng, idx), _PROJ_IDS[name])
                )
                lw_ = None if lw is None else lw.get(name)
                return linear(x, lp[name], lw_, lora_scale=lora.scale if lora else 1.0,
                              lora_dropout=lora.dropout if lora else 0.0, dropout_key=key)  # fmt: skip

            x = rms_norm(h, lp["attn_norm"]["scale"], c.rms_norm_eps)
            q = apply_rope(proj(x, "q_proj").reshape(b, t, c.num_heads, c.head_dim), position_ids, inv_freq)
            k = apply_rope(proj(x, "k_proj").reshape(b, t, c.num_kv_heads, c.head_dim), position_ids, inv_freq)
            v = proj(x, "v_proj").reshape(b, t, c.num_kv_heads, c.head_dim)
            if layer_cache is not None:
                k = jax.lax.dynamic_update_slice_in_dim(
                    layer_cache["k"], k.astype(layer_cache["k"].dtype), cache_index, 1
                )
                v = jax.lax.dynamic_update_slice_in_dim(
                    layer_cache["v"], v.astype(layer_cache["v"].dtype), cache_index, 1
                )
                layer_cache = {"k": k, "v": v}
            a = attention(q, k.astype(dtype), v.astype(dtype), allowed_bts, impl=c.attention_impl, causal=True)
            h = h + proj(a, "o_proj")
            x = rms_norm(h, lp["mlp_norm"]["scale"], c.rms_norm_eps)
            h = h + proj(jax.nn.silu(proj(x, "gate_proj")) * proj(x, "up_proj"), "down_proj")
            return h, (h if output_hidden_states else None, layer_cache)

        xs = (params["layers"], lora_weights, jnp.arange(c.num_layers), cache)
        last, (per_layer, new_cache) = jax.lax.scan(block, h, xs)
        final = rms_norm(last, params["final_norm"]["scale"], c.rms_norm_eps)
        head = lm_head_kernel(c, params)
        logits = matmul(final, head.astype(dtype), preferred_element_type=upcast_dtype(dtype))
        hidden = None
        if output_hidden_states:
            hidden = (h, *(per_layer[i] for i in range(c.num_layers - 1)), final)
        return ModelOutput(logits=logits, hidden_states=hidden, last_hidden_state=final), new_cache
