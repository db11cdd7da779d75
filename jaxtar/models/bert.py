"""BERT encoder: word + position + token-type embeddings, post-LayerNorm layers, tanh pooler, optional classifier.

Parameters (layers stacked on a leading axis and run with ``lax.scan``)::

    embed/embedding [V, D]   pos_embed/embedding [P, D]   type_embed/embedding [T, D]   embed_norm/{scale, bias} [D]
    layers/query, key, value, attn_out       {kernel [L, D, D], bias [L, D]}
    layers/attn_norm, ffn_norm               {scale, bias} [L, D]
    layers/intermediate                      {kernel [L, D, F], bias}
    layers/ffn_out                           {kernel [L, F, D], bias}
    pooler/{kernel [D, D], bias [D]}         tanh(dense(h[:, 0]))
    classifier/{kernel [D, C], bias [C]?}    only with ``num_labels > 0``; the bias is optional (MLAC's head has none)

LoRA targets are the layer projection names (``BERT_LORA_TARGETS``): ``query``, ``key``, ``value``, ``attn_out``
(transformers' ``attention.output.dense``), ``intermediate`` and ``ffn_out`` (``output.dense``).

Dropout is not modelled: the port is transformers' model in ``eval()`` mode.

Example:
    >>> from jaxtar.models import BertConfig, create_model
    >>> model, params = create_model(BertConfig.tiny(num_labels=3), seed=0)
    >>> out = model.apply(params, jnp.array([[2, 5, 7, 3]]))
    >>> out.logits.shape, out.pooled_output.shape
    ((1, 3), (1, 64))
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtar.models.functional import Model, ModelOutput, Params, model_for_config
from jaxtar.models.layers import ACTIVATIONS, attention, check_attention_impl, layer_norm, linear, upcast_dtype
from jaxtar.models.lora import LoraParams
from jaxtar.models.modules import Dense, LayerNormParams, StackedLinear

BERT_LORA_TARGETS = ("query", "key", "value", "attn_out", "intermediate", "ffn_out")
_PROJ_IDS = {name: i for i, name in enumerate(BERT_LORA_TARGETS)}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture of a BERT encoder (our field names; ``bert_hf.config_from_hf`` maps transformers').

    ``num_labels = 0`` is the bare encoder (transformers' ``BertModel``); ``num_labels > 0`` adds a linear classifier
    on the pooled output (``BertForSequenceClassification``), with a bias unless ``classifier_bias=False``.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    num_labels: int = 0
    classifier_bias: bool = True
    initializer_range: float = 0.02
    model_type: str = "bert"
    pad_token_id: int | None = 0
    attention_impl: str = "reference"  # reference | xla | cudnn (jaxtar.models.layers; not part of the checkpoint)

    def __post_init__(self) -> None:
        check_attention_impl(self.attention_impl)
        if self.model_type != "bert":
            raise ValueError(f"BertConfig needs model_type 'bert', got {self.model_type!r}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "max_position_embeddings", "type_vocab_size"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_labels < 0:
            raise ValueError(f"num_labels must be >= 0 (0 = no classifier), got {self.num_labels}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r} (supported: {sorted(ACTIVATIONS)})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @staticmethod
    def module_class() -> type[nnx.Module]:
        return Bert

    @classmethod
    def tiny(cls, **overrides: Any) -> BertConfig:
        """A small seeded test config: 2 layers, d=64, 4 heads, vocab 256, 64 positions."""
        fields = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      max_position_embeddings=64)  # fmt: skip
        return cls(**{**fields, **overrides})

    @classmethod
    def bert_tiny(cls, **overrides: Any) -> BertConfig:
        """``google/bert_uncased_L-2_H-128_A-2`` (BERT-Tiny, MLAC's model): 2 layers, d=128, 2 heads."""
        fields = dict(vocab_size=30522, hidden_size=128, intermediate_size=512, num_layers=2, num_heads=2)
        return cls(**{**fields, **overrides})


class Bert(nnx.Module):
    """The encoder (plus optional classifier). Call it through ``Model.apply`` (pure) rather than directly."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        n, d, f, std = c.num_layers, c.hidden_size, c.intermediate_size, c.initializer_range

        def table(rows: int) -> nnx.Dict:
            return nnx.Dict(embedding=nnx.Param(std * jax.random.normal(rngs.params(), (rows, d))))

        self.embed = table(c.vocab_size)
        self.pos_embed = table(c.max_position_embeddings)
        self.type_embed = table(c.type_vocab_size)
        self.embed_norm = LayerNormParams((d,))
        self.layers = nnx.Dict(
            query=StackedLinear(n, d, d, std, rngs),
            key=StackedLinear(n, d, d, std, rngs),
            value=StackedLinear(n, d, d, std, rngs),
            attn_out=StackedLinear(n, d, d, std, rngs),
            attn_norm=LayerNormParams((n, d)),
            intermediate=StackedLinear(n, d, f, std, rngs),
            ffn_out=StackedLinear(n, f, d, std, rngs),
            ffn_norm=LayerNormParams((n, d)),
        )
        self.pooler = Dense(d, d, std, rngs, bias=True)
        if c.num_labels:
            self.classifier = Dense(d, c.num_labels, std, rngs, bias=c.classifier_bias)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        output_hidden_states: bool = False,
        lora: LoraParams | None = None,
        lora_rng: jax.Array | None = None,
        dtype: Any = None,
    ) -> ModelOutput:
        c = self.config
        p = nnx.state(self, nnx.Param).to_pure_dict()
        dtype = dtype or p["embed"]["embedding"].dtype
        b, t = input_ids.shape
        mask = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
        if token_type_ids is None:
            token_type_ids = jnp.zeros((b, t), jnp.int32)
        if position_ids is None:  # transformers' default: 0..T-1 whatever the padding
            position_ids = jnp.broadcast_to(jnp.arange(t), (b, t))
        h = p["embed"]["embedding"][input_ids] + p["type_embed"]["embedding"][token_type_ids]
        h = h + p["pos_embed"]["embedding"][position_ids]
        h = layer_norm(h.astype(dtype), p["embed_norm"]["scale"], p["embed_norm"]["bias"], c.layer_norm_eps)
        allowed = jnp.broadcast_to(mask[:, None, :], (b, t, t))  # bidirectional: every query sees every real key
        act = ACTIVATIONS[c.hidden_act]

        def block(h, xs):
            lp, lw, idx = xs

            def proj(x, name):
                key = None
                if lora_rng is not None:
                    key = jax.random.fold_in(jax.random.fold_in(lora_rng, idx), _PROJ_IDS[name])
                return linear(x, lp[name], None if lw is None else lw.get(name),
                              lora_scale=lora.scale if lora else 1.0, lora_dropout=lora.dropout if lora else 0.0,
                              dropout_key=key)  # fmt: skip

            q, k, v = (proj(h, name).reshape(b, t, c.num_heads, c.head_dim) for name in ("query", "key", "value"))
            a = proj(attention(q, k, v, allowed, impl=c.attention_impl), "attn_out")
            h = layer_norm(a + h, lp["attn_norm"]["scale"], lp["attn_norm"]["bias"], c.layer_norm_eps)
            y = proj(act(proj(h, "intermediate")), "ffn_out")
            h = layer_norm(y + h, lp["ffn_norm"]["scale"], lp["ffn_norm"]["bias"], c.layer_norm_eps)
            return h, (h if output_hidden_states else None)

        xs = (p["layers"], None if lora is None else lora.weights, jnp.arange(c.num_layers))
        last, per_layer = jax.lax.scan(block, h, xs)
        pooled = jnp.tanh(linear(last[:, 0], p["pooler"]))
        logits = None
        if c.num_labels:
            head = p["classifier"]
            logits = jnp.dot(pooled, head["kernel"].astype(dtype), preferred_element_type=upcast_dtype(dtype))
            if "bias" in head:
                logits = logits + head["bias"].astype(logits.dtype)
        hidden = None
        if output_hidden_states:  # transformers: the embedding output, then every layer's output
            hidden = (h, *(per_layer[i] for i in range(c.num_layers)))
        return ModelOutput(logits=logits, hidden_states=hidden, last_hidden_state=last, pooled_output=pooled)


def with_classifier(
    model: Model, params: Params, num_labels: int, *, bias: bool = True, seed: int = 0
) -> tuple[Model, Params]:
    """The same encoder with a fresh linear classifier on its pooled output (replacing any existing one).

    Example:
        >>> from jaxtar.models import BertConfig, create_model
        >>> model, params = create_model(BertConfig.tiny(), seed=0)  # or from_pretrained(a BERT folder or Hub id)
        >>> model, params = with_classifier(model, params, 28, bias=False)   # MLAC's bias-free profession head
        >>> model.apply(params, jnp.array([[2, 5, 7, 3]])).logits.shape
        (1, 28)
        >>> sorted(params["classifier"]), model.config.num_labels
        (['kernel'], 28)
    """
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    config = dataclasses.replace(model.config, num_labels=num_labels, classifier_bias=bias)
    kernel = params["pooler"]["kernel"]
    init = config.initializer_range * jax.random.normal(jax.random.key(seed), (config.hidden_size, num_labels))
    head = {"kernel": init.astype(kernel.dtype)}
    if bias:
        head["bias"] = jnp.zeros((num_labels,), kernel.dtype)
    return model_for_config(config), {**{k: v for k, v in params.items() if k != "classifier"}, "classifier": head}
