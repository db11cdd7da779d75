"""Llama / Mistral / Qwen2 / SmolLM: transformers config <-> ``LlamaConfig`` and the safetensors rule table."""

from __future__ import annotations

from typing import Any

from jaxtar.models.llama import DECODER_TYPES, LlamaConfig
from jaxtar.models.rules import IDENTITY, TRANSPOSE, Rule

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# Buffers that older checkpoints carry and that we recompute.
IGNORE = [r"\.rotary_emb\.inv_freq$"]


def _rope(d: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    params = dict(d.get("rope_parameters") or {})
    legacy = d.get("rope_scaling") or {}
    params = {**legacy, **params}
    theta = params.pop("rope_theta", None) or d.get("rope_theta") or 10000.0
    kind = params.get("rope_type", params.get("type", "default"))
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("partial_rotary_factor != 1 is not supported")
    if kind == "default":
        return float(theta), None
    if kind == "linear":
        return float(theta), {"rope_type": "linear", "factor": float(params["factor"])}
    if kind == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        return float(theta), {"rope_type": "llama3", **{k: params[k] for k in keys}}
    raise ValueError(f"unsupported RoPE type {kind!r} (supported: default, linear, llama3)")


def config_from_hf(d: dict[str, Any]) -> LlamaConfig:
    """Maps a transformers ``config.json`` dict to ``LlamaConfig``; refuses features the port lacks, by name."""
    model_type = d.get("model_type")
    if model_type not in DECODER_TYPES:
        raise ValueError(f"not a Llama-family model_type: {model_type!r}")
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"unsupported hidden_act {act!r} (only 'silu')")
    if d.get("mlp_bias"):
        raise ValueError("unsupported config feature mlp_bias=True")
    if d.get("pretraining_tp", 1) != 1:
        raise ValueError(f"unsupported config feature pretraining_tp={d['pretraining_tp']}")
    layer_types = d.get("layer_types")
    if layer_types and any(t != "full_attention" for t in layer_types) and model_type != "mistral":
        raise ValueError(f"unsupported per-layer attention types {sorted(set(layer_types))}")
    if model_type == "qwen2" and d.get("use_sliding_window"):
        raise ValueError("unsupported config feature use_sliding_window=True (Qwen2)")
    theta, scaling = _rope(d)
    bias = bool(d.get("attention_bias", False))
    return LlamaConfig(
        vocab_size=d["vocab_size"],
        hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"],
        num_layers=d["num_hidden_layers"],
        num_heads=d["num_attention_heads"],
        num_kv_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
        head_dim=d.get("head_dim"),
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        max_position_embeddings=d.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        qkv_bias=True if model_type == "qwen2" else bias,
        o_bias=bias if model_type == "llama" else False,
        sliding_window=d.get("sliding_window") if model_type == "mistral" else None,
        initializer_range=d.get("initializer_range", 0.02),
        model_type=model_type,
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=d.get("eos_token_id"),
        pad_token_id=d.get("pad_token_id"),
    )


def config_to_hf(c: LlamaConfig) -> dict[str, Any]:
    """The ``config.json`` dict transformers needs to rebuild the same model."""
    if c.model_type == "qwen2" and not c.qkv_bias:
        raise ValueError("Qwen2 always has q/k/v biases")
    if c.model_type == "mistral" and c.qkv_bias:
        raise ValueError("Mistral has no attention biases")
    d: dict[str, Any] = {
        "model_type": c.model_type,
        "architectures": [ARCHITECTURES[c.model_type]],
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
        "initializer_range": c.initializer_range,
        "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_theta": c.rope_theta, "rope_type": "default", **(c.rope_scaling or {})},
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id,
        "torch_dtype": "float32",
    }
    if c.model_type == "llama":
        d["attention_bias"] = c.qkv_bias
        d["mlp_bias"] = False
        if c.qkv_bias != c.o_bias:
            raise ValueError("Llama's attention_bias covers q, k, v and o together")
    if c.model_type == "mistral":
        d["sliding_window"] = c.sliding_window
    if c.model_type == "qwen2":
        d["use_sliding_window"] = False
    return d


def rules(c: LlamaConfig) -> list[Rule]:
    """The key table for ``c`` (biases and the untied head only where the config has them)."""
    table = [
        Rule("model.embed_tokens.weight", ("embed", "embedding")),
        Rule("model.norm.weight", ("final_norm", "scale")),
        Rule("model.layers.{i}.input_layernorm.weight", ("layers", "attn_norm", "scale")),
        Rule("model.layers.{i}.post_attention_layernorm.weight", ("layers", "mlp_norm", "scale")),
    ]
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        table.append(Rule(f"model.layers.{{i}}.self_attn.{name}.weight", ("layers", name, "kernel"), TRANSPOSE))
        if (c.qkv_bias and name != "o_proj") or (c.o_bias and name == "o_proj"):
            table.append(Rule(f"model.layers.{{i}}.self_attn.{name}.bias", ("layers", name, "bias"), IDENTITY))
    for name in ("gate_proj", "up_proj", "down_proj"):
        table.append(Rule(f"model.layers.{{i}}.mlp.{name}.weight", ("layers", name, "kernel"), TRANSPOSE))
    if not c.tie_word_embeddings:
        table.append(Rule("lm_head.weight", ("lm_head", "kernel"), TRANSPOSE))
    return table


def ignore(c: LlamaConfig) -> list[str]:
    """Keys to skip: recomputed buffers, and a redundant ``lm_head.weight`` when embeddings are tied."""
    return IGNORE + ([r"^lm_head\.weight$"] if c.tie_word_embeddings else [])
