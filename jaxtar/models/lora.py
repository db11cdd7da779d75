"""LoRA adapters as a separate params pytree, applied at ``model.apply(..., lora=...)`` time.

The adapter for a projection ``W [in, out]`` (stacked ``[L, in, out]``) is ``a [L, in, r]`` and ``b [L, r, out]``;
the layer computes ``x @ W + (alpha / r) * (dropout(x) @ a) @ b``. ``b`` starts at zero, so a fresh adapter leaves the
model unchanged (as PEFT does). Only the adapter weights are pytree leaves; ``scale`` and ``dropout`` are static, so
an optimiser run over a ``LoraParams`` trains just ``a`` and ``b``.

Example:
    >>> from jaxtar.models import LlamaConfig, LoraConfig, create_model, init_lora
    >>> model, params = create_model(LlamaConfig.tiny())
    >>> lora = init_lora(jax.random.key(0), model, params, LoraConfig(rank=4, alpha=8, targets=("q_proj", "v_proj")))
    >>> lora.weights["q_proj"]["a"].shape, lora.scale
    ((2, 64, 4), 2.0)
    >>> ids = jnp.array([[1, 2, 3]])
    >>> out = model.apply(params, ids, lora=lora)
    >>> bool(jnp.allclose(out.logits, model.apply(params, ids).logits))   # b starts at zero: no change yet
    True
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

LLAMA_ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Which projections get adapters and their rank, alpha and dropout (defaults: the TAR red team's r16/a32)."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    targets: tuple[str, ...] = LLAMA_ALL_TARGETS

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ValueError("LoRA needs at least one target projection")
        object.__setattr__(self, "targets", tuple(self.targets))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LoraParams:
    """Adapter weights (``{target: {"a": [L, in, r], "b": [L, r, out]}}``) plus static scale and dropout."""

    weights: dict[str, dict[str, jax.Array]]
    scale: float = dataclasses.field(metadata={"static": True}, default=1.0)
    dropout: float = dataclasses.field(metadata={"static": True}, default=0.0)


def init_lora(key: jax.Array, model: Any, params: dict[str, Any], config: LoraConfig) -> LoraParams:
    """Fresh adapters for ``config.targets`` of the stacked layers in ``params["layers"]``.

    ``a`` gets PEFT's Kaiming-uniform initialisation, ``b`` zeros.
    """
    layers = params["layers"]
    missing = [t for t in config.targets if t not in layers]
    if missing:
        raise ValueError(f"LoRA targets {missing} are not projections of this model; it has {sorted(layers)}")
    weights = {}
    for i, target in enumerate(config.targets):
        kernel = layers[target]["kernel"]
        n_layers, d_in, d_out = kernel.shape
        bound = 1.0 / math.sqrt(d_in)  # kaiming_uniform(a=sqrt(5)) on a fan_in of d_in
        a = jax.random.uniform(jax.random.fold_in(key, i), (n_layers, d_in, config.rank), kernel.dtype, -bound, bound)
        weights[target] = {"a": a, "b": jnp.zeros((n_layers, config.rank, d_out), kernel.dtype)}
    return LoraParams(weights=weights, scale=config.alpha / config.rank, dropout=config.dropout)


def merge_lora(params: dict[str, Any], lora: LoraParams) -> dict[str, Any]:
    """Folds the adapters into the base kernels (dropout ignored): a plain params dict for export."""
    layers = dict(params["layers"])
    for target, ab in lora.weights.items():
        delta = lora.scale * jnp.einsum("lir,lro->lio", ab["a"], ab["b"])
        layers[target] = {
            **layers[target],
            "kernel": layers[target]["kernel"] + delta.astype(layers[target]["kernel"].dtype),
        }
    return {**params, "layers": layers}
