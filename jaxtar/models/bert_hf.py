"""BERT: transformers config <-> ``BertConfig`` and the safetensors rule table.

Loads checkpoints saved from ``BertModel`` (unprefixed keys, e.g. all-MiniLM-L6-v2), from
``BertForSequenceClassification`` (``bert.`` prefix plus ``classifier``) and from the pre-training classes (their
``cls.*`` MLM/NSP heads are ignored: the port has no such heads), with legacy ``LayerNorm.gamma/beta`` names. The
``embeddings.position_ids`` / ``token_type_ids`` buffers are ignored. Whether a classifier is built is decided by the
config's ``architectures``: ``BertForSequenceClassification`` gives one with ``len(id2label)`` outputs.

Saving writes the ``BertModel`` layout (unprefixed) without a classifier and the ``BertForSequenceClassification``
layout with one. A bias-free classifier (``classifier_bias=False``) is saved without ``classifier.bias`` and with
``"classifier_bias": false`` in ``config.json``; transformers then initialises the missing bias to zeros, which is
the same model.

Example:
    >>> d = {"model_type": "bert", "architectures": ["BertModel"], "vocab_size": 30522, "hidden_size": 384,
    ...      "intermediate_size": 1536, "num_hidden_layers": 6, "num_attention_heads": 12}  # all-MiniLM-L6-v2, abridged
    >>> config = config_from_hf(d)
    >>> config.num_labels, rules(config)[0].hf_key
    (0, 'embeddings.word_embeddings.weight')
    >>> head = BertConfig.tiny(num_labels=3, classifier_bias=False)
    >>> config_from_hf(config_to_hf(head)) == head, rules(head)[0].hf_key
    (True, 'bert.embeddings.word_embeddings.weight')
"""

from __future__ import annotations

from typing import Any

from jaxtar.models.bert import ACTIVATIONS, BertConfig
from jaxtar.models.rules import IDENTITY, TRANSPOSE, AliasRule, Rule, Transform

PREFIX = "bert."
LEGACY = (("LayerNorm.weight", "LayerNorm.gamma"), ("LayerNorm.bias", "LayerNorm.beta"))
IGNORE = [r"(^|\.)embeddings\.position_ids$", r"(^|\.)embeddings\.token_type_ids$", r"^cls\."]
CLASSIFIER_ARCH = "BertForSequenceClassification"
# Heads whose weights the port cannot represent; loading them as a bare encoder would silently drop them.
_REFUSED_ARCHS = ("BertForTokenClassification", "BertForQuestionAnswering", "BertForMultipleChoice", "BertLMHeadModel")


def config_from_hf(d: dict[str, Any]) -> BertConfig:
    """Maps a transformers BERT ``config.json`` dict to ``BertConfig``; refuses features the port lacks, by name."""
    if d.get("model_type") != "bert":
        raise ValueError(f"not a BERT model_type: {d.get('model_type')!r}")
    act = d.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {act!r} (supported: {sorted(ACTIVATIONS)})")
    for flag in ("is_decoder", "add_cross_attention"):
        if d.get(flag):
            raise ValueError(f"unsupported config feature {flag}=True (the port is an encoder)")
    pos = d.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise ValueError(f"unsupported position_embedding_type {pos!r} (only 'absolute')")
    archs = d.get("architectures") or []
    refused = [a for a in archs if a in _REFUSED_ARCHS]
    if refused:
        raise ValueError(f"unsupported architecture {refused[0]} (the port has an encoder, pooler and "
                         f"sequence-classification head)")  # fmt: skip
    num_labels = 0
    if CLASSIFIER_ARCH in archs:
        num_labels = len(d["id2label"]) if d.get("id2label") else int(d.get("num_labels", 2))
    return BertConfig(
        vocab_size=d["vocab_size"],
        hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"],
        num_layers=d["num_hidden_layers"],
        num_heads=d["num_attention_heads"],
        max_position_embeddings=d.get("max_position_embeddings", 512),
        type_vocab_size=d.get("type_vocab_size", 2),
        layer_norm_eps=d.get("layer_norm_eps", 1e-12),
        hidden_act=act,
        num_labels=num_labels,
        classifier_bias=bool(d.get("classifier_bias", True)),
        initializer_range=d.get("initializer_range", 0.02),
        pad_token_id=d.get("pad_token_id", 0),
    )


def config_to_hf(c: BertConfig) -> dict[str, Any]:
    """The ``config.json`` dict for ``BertModel`` (no classifier) or ``BertForSequenceClassification``."""
    d: dict[str, Any] = {
        "model_type": "bert",
        "architectures": [CLASSIFIER_ARCH if c.num_labels else "BertModel"],
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "max_position_embeddings": c.max_position_embeddings,
        "type_vocab_size": c.type_vocab_size,
        "layer_norm_eps": c.layer_norm_eps,
        "hidden_act": c.hidden_act,
        "initializer_range": c.initializer_range,
        "pad_token_id": c.pad_token_id,
        "position_embedding_type": "absolute",
        "is_decoder": False,
        "add_cross_attention": False,
        "torch_dtype": "float32",
    }
    if c.num_labels:
        d["id2label"] = {str(i): f"LABEL_{i}" for i in range(c.num_labels)}
        d["label2id"] = {f"LABEL_{i}": i for i in range(c.num_labels)}
        if not c.classifier_bias:
            d["classifier_bias"] = False
    return d


def rules(c: BertConfig) -> list[Rule]:
    """The key table; canonical names carry ``bert.`` only when there is a classifier (as transformers saves)."""
    prefix = PREFIX if c.num_labels else ""

    def rule(key: str, path: tuple[str, ...], transform: Transform = IDENTITY) -> AliasRule:
        return AliasRule(prefix + key, path, transform, optional_prefix=PREFIX, legacy_suffixes=LEGACY)

    def linear(key: str, ours: tuple[str, ...]) -> list[AliasRule]:
        return [rule(f"{key}.weight", (*ours, "kernel"), TRANSPOSE), rule(f"{key}.bias", (*ours, "bias"))]

    def norm(key: str, ours: tuple[str, ...]) -> list[AliasRule]:
        return [rule(f"{key}.LayerNorm.weight", (*ours, "scale")), rule(f"{key}.LayerNorm.bias", (*ours, "bias"))]

    layer = "encoder.layer.{i}"
    table = [
        rule("embeddings.word_embeddings.weight", ("embed", "embedding")),
        rule("embeddings.position_embeddings.weight", ("pos_embed", "embedding")),
        rule("embeddings.token_type_embeddings.weight", ("type_embed", "embedding")),
        *norm("embeddings", ("embed_norm",)),
        *linear(f"{layer}.attention.self.query", ("layers", "query")),
        *linear(f"{layer}.attention.self.key", ("layers", "key")),
        *linear(f"{layer}.attention.self.value", ("layers", "value")),
        *linear(f"{layer}.attention.output.dense", ("layers", "attn_out")),
        *norm(f"{layer}.attention.output", ("layers", "attn_norm")),
        *linear(f"{layer}.intermediate.dense", ("layers", "intermediate")),
        *linear(f"{layer}.output.dense", ("layers", "ffn_out")),
        *norm(f"{layer}.output", ("layers", "ffn_norm")),
        *linear("pooler.dense", ("pooler",)),
    ]
    if c.num_labels:
        table.append(Rule("classifier.weight", ("classifier", "kernel"), TRANSPOSE))
        if c.classifier_bias:
            table.append(Rule("classifier.bias", ("classifier", "bias")))
    return table


def ignore(c: BertConfig) -> list[str]:
    """Keys to skip: position/token-type id buffers and the pre-training heads (``cls.*``)."""
    return list(IGNORE)
