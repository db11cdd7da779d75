"""GGUF files (llama.cpp) straight into the Llama port, dequantised with the ``gguf`` package.

llama.cpp stores ``attn_q`` / ``attn_k`` rows permuted for its interleaved RoPE; we undo that permutation so the
weights match transformers' rotate-half convention (as transformers' own GGUF reader does).

Example:
    >>> model, params = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
    >>> [rule.hf_key for rule in gguf_rules(LlamaConfig.tiny())][:3]
    ['token_embd.weight', 'output_norm.weight', 'blk.{i}.attn_norm.weight']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxtar.models.functional import Model, Params, model_for_config
from jaxtar.models.llama import LlamaConfig
from jaxtar.models.rules import TRANSPOSE, Rule, Transform


def _unpermute(weights: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k row permutation: rows grouped as (head, pair, half) -> (head, half, pair)."""
    rows = weights.shape[0]
    w = weights.reshape(n_heads, rows // n_heads // 2, 2, *weights.shape[1:])
    return w.swapaxes(1, 2).reshape(weights.shape)


def _permute(weights: np.ndarray, n_heads: int) -> np.ndarray:
    rows = weights.shape[0]
    w = weights.reshape(n_heads, 2, rows // n_heads // 2, *weights.shape[1:])
    return w.swapaxes(1, 2).reshape(weights.shape)


def _rope_rows(n_heads: int) -> Transform:
    return Transform(
        f"unpermute({n_heads})+transpose",
        lambda x: _unpermute(x, n_heads).T,
        lambda x: _permute(x.T, n_heads),
        TRANSPOSE.hf_shape,
    )


def gguf_rules(c: LlamaConfig) -> list[Rule]:
    """GGUF tensor names for the Llama architecture -> our params tree."""
    table = [
        Rule("token_embd.weight", ("embed", "embedding")),
        Rule("output_norm.weight", ("final_norm", "scale")),
        Rule("blk.{i}.attn_norm.weight", ("layers", "attn_norm", "scale")),
        Rule("blk.{i}.ffn_norm.weight", ("layers", "mlp_norm", "scale")),
        Rule("blk.{i}.attn_q.weight", ("layers", "q_proj", "kernel"), _rope_rows(c.num_heads)),
        Rule("blk.{i}.attn_k.weight", ("layers", "k_proj", "kernel"), _rope_rows(c.num_kv_heads)),
        Rule("blk.{i}.attn_v.weight", ("layers", "v_proj", "kernel"), TRANSPOSE),
        Rule("blk.{i}.attn_output.weight", ("layers", "o_proj", "kernel"), TRANSPOSE),
        Rule("blk.{i}.ffn_gate.weight", ("layers", "gate_proj", "kernel"), TRANSPOSE),
        Rule("blk.{i}.ffn_up.weight", ("layers", "up_proj", "kernel"), TRANSPOSE),
        Rule("blk.{i}.ffn_down.weight", ("layers", "down_proj", "kernel"), TRANSPOSE),
    ]
    if not c.tie_word_embeddings:
        table.append(Rule("output.weight", ("lm_head", "kernel"), TRANSPOSE))
    return table


def _field(reader: Any, name: str, default: Any = None) -> Any:
    field = reader.fields.get(name)
    return default if field is None else field.contents()


def gguf_config(reader: Any, tensor_names: set[str]) -> LlamaConfig:
    """The ``LlamaConfig`` a GGUF file describes; refuses architectures and RoPE scalings the port lacks."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture {arch!r} is not supported (only 'llama')")
    if _field(reader, "llama.rope.scaling.type") not in (None, "none"):
        raise ValueError(f"GGUF RoPE scaling {_field(reader, 'llama.rope.scaling.type')!r} is not supported")
    heads = int(_field(reader, "llama.attention.head_count"))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = _field(reader, "llama.vocab_size") or (len(tokens.data) if tokens is not None else None)
    return LlamaConfig(
        vocab_size=int(vocab),
        hidden_size=int(_field(reader, "llama.embedding_length")),
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_layers=int(_field(reader, "llama.block_count")),
        num_heads=heads,
        num_kv_heads=int(_field(reader, "llama.attention.head_count_kv", heads)),
        rope_theta=float(_field(reader, "llama.rope.freq_base", 10000.0)),
        rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        max_position_embeddings=int(_field(reader, "llama.context_length", 2048)),
        tie_word_embeddings="output.weight" not in tensor_names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
    )


def load_gguf(
    path: str | Path, *, dtype: Any = jnp.float32, sharding: Any = None, allow_nonfinite: bool = False
) -> tuple[Model, Params]:
    """Loads a llama-architecture GGUF file (any quantisation ``gguf`` can dequantise) into the Llama port.

    NaN/inf weights are refused unless ``allow_nonfinite`` (see `jaxtar.models.streaming.stream_params`).
    """
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from jaxtar.errors import CheckpointError
    from jaxtar.models.streaming import stream_params

    path = Path(path)
    try:
        reader = GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - the reader raises assorted errors on bad files
        raise CheckpointError(f"{path} is not a readable GGUF file: {err}") from err
    tensors = {t.name: t for t in reader.tensors}
    try:
        config = gguf_config(reader, set(tensors))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: {err}") from err
    model = model_for_config(config)

    def get_tensor(name: str) -> np.ndarray:
        t = tensors[name]
        return np.asarray(dequantize(t.data, t.tensor_type), np.float32).reshape(tuple(int(d) for d in t.shape[::-1]))

    params = stream_params(
        model, sorted(tensors), lambda name: tuple(int(d) for d in tensors[name].shape[::-1]), get_tensor,
        gguf_rules(config), [r"^rope_freqs\.weight$"], source=str(path), dtype=dtype, sharding=sharding,
        allow_nonfinite=allow_nonfinite,
    )  # fmt: skip
    return model, params
