"""GPT-2: learned positions, pre-LayerNorm blocks, a fused q/k/v projection and an LM head tied to the embeddings.

Parameters (layers stacked on a leading axis and run with ``lax.scan``)::

    embed/embedding [V, D]      pos_embed/embedding [P, D]      final_norm/{scale, bias} [D]   (ln_f)
    layers/ln_1, ln_2           {scale, bias} [L, D]
    layers/c_attn               {kernel [L, D, 3D], bias}        fused q|k|v, transformers' Conv1D layout (in x out)
    layers/c_proj               {kernel [L, D, D], bias}         attention output
    layers/c_fc                 {kernel [L, D, F], bias}         MLP in
    layers/mlp_c_proj           {kernel [L, F, D], bias}         MLP out

LoRA targets are the layer projection names: ``c_attn`` (the fused q/k/v, as PEFT adapts GPT-2), ``c_proj``,
``c_fc`` and ``mlp_c_proj`` (see ``GPT2_LORA_TARGETS``).

Example:
    >>> from jaxtar.models import GPT2Config, create_model
    >>> model, params = create_model(GPT2Config.tiny(), seed=0)
    >>> model.apply(params, jnp.array([[1, 2, 3]])).logits.shape
    (1, 3, 256)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtar.models.functional import ModelOutput
from jaxtar.models.layers import (
    ACTIVATIONS,
    attention,
    causal_mask,
    check_attention_impl,
    layer_norm,
    linear,
    matmul,
    upcast_dtype,
)
from jaxtar.models.lora import LoraParams
from jaxtar.models.modules import LayerNormParams, StackedLinear

GPT2_LORA_TARGETS = ("c_attn", "c_proj", "c_fc", "mlp_c_proj")
_PROJ_IDS = {name: i for i, name in enumerate(GPT2_LORA_TARGETS)}


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """Architecture of a GPT-2 model (our field names; ``gpt2_hf.config_from_hf`` maps transformers' ``n_*``)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int | None = None  # transformers' n_inner; None means 4 * hidden_size
    max_position_embeddings: int = 1024
    layer_norm_eps: float = 1e-5
    activation: str = "gelu_new"
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    initializer_range: float = 0.02
    model_type: str = "gpt2"
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    pad_token_id: int | None = None
    attention_impl: str = "reference"  # reference | xla | cudnn (jaxtar.models.layers; not part of the checkpoint)

    def __post_init__(self) -> None:
        check_attention_impl(self.attention_impl)
        if self.model_type != "gpt2":
            raise ValueError(f"GPT2Config needs model_type 'gpt2', got {self.model_type!r}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unsupported activation {self.activation!r} (supported: {sorted(ACTIVATIONS)})")
        if self.intermediate_size is None:
            object.__setattr__(self, "intermediate_size", 4 * self.hidden_size)
        if self.intermediate_size < 1:
            raise ValueError(f"intermediate_size must be >= 1, got {self.intermediate_size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_kv_heads(self) -> int:
        """GPT-2 is plain multi-head attention (named like the Llama config so KV-cache code can share it)."""
        return self.num_heads

    @property
    def tie_word_embeddings(self) -> bool:
        return True

    @staticmethod
    def module_class() -> type[nnx.Module]:
        return GPT2

    @classmethod
    def tiny(cls, **overrides: Any) -> GPT2Config:
        """A small seeded test config: 2 layers, d=64, 4 heads, vocab 256, 128 positions."""
        fields = dict(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, max_position_embeddings=128)
        return cls(**{**fields, **overrides})

    @classmethod
    def gpt2_small(cls, **overrides: Any) -> GPT2Config:
        """The 124M ``gpt2`` architecture (12 layers, d=768, 12 heads, 1024 positions)."""
        fields = dict(vocab_size=50257, hidden_size=768, num_layers=12, num_heads=12, max_position_embeddings=1024)
        return cls(**{**fields, **overrides})


class GPT2(nnx.Module):
    """The decoder. Call it through ``Model.apply`` (pure) rather than directly."""

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        n, d, f, std = c.num_layers, c.hidden_size, c.intermediate_size, c.initializer_range
        resid_std = std / math.sqrt(2 * n)  # GPT-2's scaled init of the projections into the residual stream
        self.embed = nnx.Dict(embedding=nnx.Param(std * jax.random.normal(rngs.params(), (c.vocab_size, d))))
        self.pos_embed = nnx.Dict(
            embedding=nnx.Param(std * jax.random.normal(rngs.params(), (c.max_position_embeddings, d)))
        )
        self.layers = nnx.Dict(
            ln_1=LayerNormParams((n, d)),
            c_attn=StackedLinear(n, d, 3 * d, std, rngs),
            c_proj=StackedLinear(n, d, d, resid_std, rngs),
            ln_2=LayerNormParams((n, d)),
            c_fc=StackedLinear(n, d, f, std, rngs),
            mlp_c_proj=StackedLinear(n, f, d, resid_std, rngs),
        )
        self.final_norm = LayerNormParams((d,))

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
        allowed = causal_mask(jnp.broadcast_to(jnp.arange(t), (b, t)), jnp.arange(t), mask)
        out, _ = self.forward(input_ids, position_ids, allowed, None, 0, output_hidden_states, lora, lora_rng, dtype)
        return out

    def forward(self, input_ids, position_ids, allowed_bts, cache, cache_index, output_hidden_states, lora, lora_rng,
                dtype):  # fmt: skip
        """Same contract as ``Llama.forward``: ``cache`` is ``{"k", "v"}: [L, B, S, H, hd]`` or ``None``."""
        c = self.config
        params = nnx.state(self, nnx.Param).to_pure_dict()
        dtype = dtype or params["embed"]["embedding"].dtype
        b, t = input_ids.shape
        h = params["embed"]["embedding"][input_ids] + params["pos_embed"]["embedding"][position_ids]
        h = h.astype(dtype)
        act = ACTIVATIONS[c.activation]
        base_scale = c.head_dim**-0.5 if c.scale_attn_weights else 1.0

        def block(h, xs):
            lp, lw, idx, layer_cache = xs

            def proj(x, name):
                key = None
                if lora_rng is not None:
                    key = jax.random.fold_in(jax.random.fold_in(lora_rng, idx), _PROJ_IDS[name])
                return linear(x, lp[name], None if lw is None else lw.get(name),
                              lora_scale=lora.scale if lora else 1.0, lora_dropout=lora.dropout if lora else 0.0,
                              dropout_key=key)  # fmt: skip

            x = layer_norm(h, lp["ln_1"]["scale"], lp["ln_1"]["bias"], c.layer_norm_eps)
            q, k, v = jnp.split(proj(x, "c_attn"), 3, axis=-1)
            q, k, v = (y.reshape(b, t, c.num_heads, c.head_dim) for y in (q, k, v))
            if layer_cache is not None:
                layer_cache = {
                    n: jax.lax.dynamic_update_slice_in_dim(
                        layer_cache[n], y.astype(layer_cache[n].dtype), cache_index, 1
                    )
                    for n, y in (("k", k), ("v", v))
                }
                k, v = layer_cache["k"], layer_cache["v"]
            scale = base_scale / (idx + 1).astype(jnp.float32) if c.scale_attn_by_inverse_layer_idx else base_scale
            a = attention(
                q, k.astype(dtype), v.astype(dtype), allowed_bts, scale=scale, impl=c.attention_impl, causal=True
            )
            h = h + proj(a, "c_proj")
            x = layer_norm(h, lp["ln_2"]["scale"], lp["ln_2"]["bias"], c.layer_norm_eps)
            h = h + proj(act(proj(x, "c_fc")), "mlp_c_proj")
            return h, (h if output_hidden_states else None, layer_cache)

        xs = (params["layers"], None if lora is None else lora.weights, jnp.arange(c.num_layers), cache)
        last, (per_layer, new_cache) = jax.lax.scan(block, h, xs)
        final = layer_norm(last, params["final_norm"]["scale"], params["final_norm"]["bias"], c.layer_norm_eps)
        head = params["embed"]["embedding"].T.astype(dtype)
        logits = matmul(final, head, preferred_element_type=upcast_dtype(dtype))
        hidden = None
        if output_hidden_states:  # transformers: embeddings, every block's output, ln_f applied to the last one
            hidden = (h, *(per_layer[i] for i in range(c.num_layers - 1)), final)
        return ModelOutput(logits=logits, hidden_states=hidden, last_hidden_state=final), new_cache
