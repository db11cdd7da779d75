"""The pure functional view of a model: ``(Model, params)`` with ``model.apply(params, ...)``.

Every model port is a Flax NNX module. It is split once into a static ``graphdef`` and a pytree of
parameters (a plain nested ``dict`` of arrays, layers stacked on a leading axis); everything after that is
plain ``jax.jit`` / ``grad`` / ``vmap`` / ``lax.scan`` over that dict.

Example:
    >>> from jaxtar.models import LlamaConfig, create_model
    >>> model, params = create_model(LlamaConfig.tiny(), seed=0)
    >>> out = model.apply(params, jnp.ones((1, 5), jnp.int32))
    >>> out.logits.shape
    (1, 5, 256)
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

Params = dict[str, Any]


class ModelOutput(NamedTuple):
    """What every port returns (a pytree).

    Attributes:
        logits: float32 logits ``[B, T, V]`` for decoders, ``[B, C]`` for classifiers, else ``None``.
        hidden_states: with ``output_hidden_states=True``, a tuple of ``num_layers + 1`` arrays ``[B, T, D]`` in the
            Hugging Face convention (embeddings, then every layer's output; decoders apply the final norm to the last).
        last_hidden_state: the final hidden states ``[B, T, D]``.
        pooled_output: BERT's pooled ``[CLS]`` output ``[B, D]``; ``None`` elsewhere.
    """

    logits: jax.Array | None
    hidden_states: tuple[jax.Array, ...] | None = None
    last_hidden_state: jax.Array | None = None
    pooled_output: jax.Array | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A split NNX module: static structure plus its config. Hashable by identity, safe as a jit static arg."""

    config: Any
    graphdef: Any

    def module(self, params: Params) -> nnx.Module:
        """Rebuilds the NNX module around ``params`` (cheap; used inside traced functions)."""
        return nnx.merge(self.graphdef, nnx.State(params))

    def apply(
        self,
        params: Params,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        **kwargs: Any,
    ) -> ModelOutput:
        """Runs the model as a pure function of ``params``.

        Args:
            params: the parameter dict.
            input_ids: ``[B, T]`` int token ids.
            attention_mask: ``[B, T]`` 1 for real tokens, 0 for padding (left or right). ``None`` means all ones.
            **kwargs: model-specific keywords: ``position_ids``, ``token_type_ids``, ``output_hidden_states``,
                ``lora`` (a LoRA params pytree), ``lora_rng`` (key for LoRA dropout), ``dtype`` (compute dtype).
        """
        return self.module(params)(input_ids, attention_mask, **kwargs)

    def lm_head(self, params: Params) -> jax.Array:
        """The ``[D, V]`` kernel of a decoder's LM head: ``logits = last_hidden_state @ lm_head(params)`` (in the
        compute dtype, accumulated in float32), for the chunked ``*_from_hidden`` losses of `jaxtar.objectives`.

        Example:
            >>> from jaxtar.models import LlamaConfig
            >>> model, params = create_model(LlamaConfig.tiny(tie_word_embeddings=True), seed=0)
            >>> out = model.apply(params, jnp.ones((1, 5), jnp.int32))
            >>> bool(jnp.allclose(out.last_hidden_state @ model.lm_head(params), out.logits, atol=1e-5))
            True
        """
        return lm_head_kernel(self.config, params)

    def abstract_params(self) -> Params:
        """Shapes and dtypes of the parameters, without allocating them."""
        return jax.eval_shape(lambda: _init_params(self, 0))

    def init(self, seed: int = 0) -> Params:
        """Fresh randomly initialised parameters (the module's own initialisers)."""
        return _init_params(self, seed)


def lm_head_kernel(config: Any, params: Params) -> jax.Array:
    """A decoder's ``[D, V]`` LM head: the transposed embedding when ``config.tie_word_embeddings``, else
    ``params["lm_head"]["kernel"]``. Raises ValueError for a model without an LM head (e.g. BERT)."""
    if getattr(config, "tie_word_embeddings", False):
        return params["embed"]["embedding"].T
    if "lm_head" in params:
        return params["lm_head"]["kernel"]
    raise ValueError(f"{type(config).__name__} has no LM head (neither tied embeddings nor params['lm_head'])")


def _init_params(model: Model, seed: int) -> Params:
    module = model.config.module_class()(model.config, rngs=nnx.Rngs(seed))
    return nnx.split(module, nnx.Param)[1].to_pure_dict()


def create_model(config: Any, seed: int = 0) -> tuple[Model, Params]:
    """Builds the port for ``config`` and returns ``(model, params)``.

    Example:
        >>> from jaxtar.models import LlamaConfig
        >>> model, params = create_model(LlamaConfig.tiny(), seed=0)
        >>> sorted(params), params["layers"]["q_proj"]["kernel"].shape   # layers stacked on a leading axis
        (['embed', 'final_norm', 'layers', 'lm_head'], (2, 64, 64))
    """
    module = config.module_class()(config, rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(module, nnx.Param)
    return Model(config=config, graphdef=graphdef), state.to_pure_dict()


def model_for_config(config: Any) -> Model:
    """The ``Model`` for ``config`` without materialising parameters (for loading)."""
    module = nnx.eval_shape(lambda: config.module_class()(config, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(module, nnx.Param)
    return Model(config=config, graphdef=graphdef)


def cast_params(params: Params, dtype: Any) -> Params:
    """Casts every floating leaf to ``dtype`` (e.g. ``jnp.bfloat16``)."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def count_params(params: Params) -> int:
    """Total number of scalars in a params pytree."""
    return sum(int(x.size) for x in jax.tree.leaves(params))
