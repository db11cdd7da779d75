"""GPT-2: transformers config <-> ``GPT2Config`` and the safetensors rule table.

Checkpoints come in two key styles and both load: ``transformer.h.{i}...`` (``GPT2LMHeadModel.save_pretrained``)
and unprefixed ``h.{i}...`` (``GPT2Model``, and the original hub checkpoints). The causal-mask buffers older
checkpoints carry (``attn.bias``, ``attn.masked_bias``) and a redundant tied ``lm_head.weight`` are ignored. Saving
writes the ``GPT2LMHeadModel`` layout.

Example:
    >>> d = {"model_type": "gpt2", "vocab_size": 50257, "n_embd": 768, "n_layer": 12, "n_head": 12,
    ...      "n_positions": 1024, "bos_token_id": 50256, "eos_token_id": 50256}  # gpt2's config.json, abridged
    >>> config = config_from_hf(d)
    >>> config == GPT2Config.gpt2_small(), config.intermediate_size
    (True, 3072)
    >>> [r.hf_key for r in rules(config)][:2]
    ['transformer.wte.weight', 'transformer.wpe.weight']
    >>> config_from_hf(config_to_hf(config)) == config
    True
"""

from __future__ import annotations

from typing import Any

from jaxtar.models.gpt2 import ACTIVATIONS, GPT2Config
from jaxtar.models.rules import IDENTITY, AliasRule, Rule

PREFIX = "transformer."
IGNORE = [r"(^|\.)h\.\d+\.attn\.(masked_)?bias$", r"^lm_head\.weight$"]


def config_from_hf(d: dict[str, Any]) -> GPT2Config:
    """Maps a transformers GPT-2 ``config.json`` dict to ``GPT2Config``; refuses features the port lacks, by name."""
    if d.get("model_type") != "gpt2":
        raise ValueError(f"not a GPT-2 model_type: {d.get('model_type')!r}")
    act = d.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise ValueError(f"unsupported activation_function {act!r} (supported: {sorted(ACTIVATIONS)})")
    if d.get("add_cross_attention"):
        raise ValueError("unsupported config feature add_cross_attention=True (GPT-2 as a decoder of an encoder)")
    if not d.get("tie_word_embeddings", True):
        raise ValueError("unsupported config feature tie_word_embeddings=False (the GPT-2 port ties its LM head)")
    # reorder_and_upcast_attn only changes where fp32 is used; the port always scores and softmaxes in fp32.
    return GPT2Config(
        vocab_size=d["vocab_size"],
        hidden_size=d.get("n_embd", d.get("hidden_size")),
        num_layers=d.get("n_layer", d.get("num_hidden_layers")),
        num_heads=d.get("n_head", d.get("num_attention_heads")),
        intermediate_size=d.get("n_inner"),
        max_position_embeddings=d.get("n_positions", d.get("max_position_embeddings", 1024)),
        layer_norm_eps=d.get("layer_norm_epsilon", 1e-5),
        activation=act,
        scale_attn_weights=bool(d.get("scale_attn_weights", True)),
        scale_attn_by_inverse_layer_idx=bool(d.get("scale_attn_by_inverse_layer_idx", False)),
        initializer_range=d.get("initializer_range", 0.02),
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=d.get("eos_token_id"),
        pad_token_id=d.get("pad_token_id"),
    )


def config_to_hf(c: GPT2Config) -> dict[str, Any]:
    """The ``config.json`` dict for ``GPT2LMHeadModel`` that rebuilds the same model."""
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": c.vocab_size,
        "n_embd": c.hidden_size,
        "n_layer": c.num_layers,
        "n_head": c.num_heads,
        "n_inner": c.intermediate_size,
        "n_positions": c.max_position_embeddings,
        "layer_norm_epsilon": c.layer_norm_eps,
        "activation_function": c.activation,
        "scale_attn_weights": c.scale_attn_weights,
        "scale_attn_by_inverse_layer_idx": c.scale_attn_by_inverse_layer_idx,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
        "initializer_range": c.initializer_range,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id,
        "torch_dtype": "float32",
    }


def rules(c: GPT2Config) -> list[Rule]:
    """The key table (``GPT2LMHeadModel`` names; the ``transformer.`` prefix is optional when loading)."""

    def rule(key: str, path: tuple[str, ...]) -> AliasRule:
        return AliasRule(PREFIX + key, path, IDENTITY, optional_prefix=PREFIX)  # Conv1D weights are already in x out

    table = [
        rule("wte.weight", ("embed", "embedding")),
        rule("wpe.weight", ("pos_embed", "embedding")),
        rule("ln_f.weight", ("final_norm", "scale")),
        rule("ln_f.bias", ("final_norm", "bias")),
    ]
    for hf_name, ours in (("ln_1", "ln_1"), ("ln_2", "ln_2")):
        table.append(rule(f"h.{{i}}.{hf_name}.weight", ("layers", ours, "scale")))
        table.append(rule(f"h.{{i}}.{hf_name}.bias", ("layers", ours, "bias")))
    for hf_name, ours in (("attn.c_attn", "c_attn"), ("attn.c_proj", "c_proj"), ("mlp.c_fc", "c_fc"),
                          ("mlp.c_proj", "mlp_c_proj")):  # fmt: skip
        table.append(rule(f"h.{{i}}.{hf_name}.weight", ("layers", ours, "kernel")))
        table.append(rule(f"h.{{i}}.{hf_name}.bias", ("layers", ours, "bias")))
    return table


def ignore(c: GPT2Config) -> list[str]:
    """Keys to skip: the causal-mask buffers of older checkpoints and the tied ``lm_head.weight``."""
    return list(IGNORE)
