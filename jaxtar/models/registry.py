"""Which ports exist, keyed by transformers' ``model_type``: config mapping and key table for each."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from jaxtar.models.rules import Rule


@dataclasses.dataclass(frozen=True)
class Architecture:
    """How one family maps between transformers and jaxtar."""

    model_types: tuple[str, ...]
    config_from_hf: Callable[[dict[str, Any]], Any]
    config_to_hf: Callable[[Any], dict[str, Any]]
    rules: Callable[[Any], list[Rule]]
    ignore: Callable[[Any], list[str]]


def _architectures() -> list[Architecture]:
    from jaxtar.models import bert_hf, gpt2_hf, llama_hf

    archs = [
        Architecture(
            ("llama", "mistral", "qwen2"),
            llama_hf.config_from_hf,
            llama_hf.config_to_hf,
            llama_hf.rules,
            llama_hf.ignore,
        ),
        Architecture(("gpt2",), gpt2_hf.config_from_hf, gpt2_hf.config_to_hf, gpt2_hf.rules, gpt2_hf.ignore),
        Architecture(("bert",), bert_hf.config_from_hf, bert_hf.config_to_hf, bert_hf.rules, bert_hf.ignore),
    ]
    return archs


def supported_model_types() -> list[str]:
    """Every ``model_type`` a checkpoint may declare."""
    return sorted(t for arch in _architectures() for t in arch.model_types)


def architecture_for(model_type: str | None) -> Architecture:
    """The family for ``model_type``.

    Raises:
        ValueError: naming the unknown type and the supported ones.
    """
    for arch in _architectures():
        if model_type in arch.model_types:
            return arch
    raise ValueError(f"unsupported model_type {model_type!r}; jaxtar ports: {', '.join(supported_model_types())}")
