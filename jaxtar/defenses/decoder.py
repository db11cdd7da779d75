"""Decoder-LM defences (TAR, random mapping) as values of the one runner: their model from ``config.model``, the
content hashes a resume compares, and the `Defence` they share.

Example:
    >>> from jaxtar.defenses.tar import build_tar_phases
    >>> decoder_defence("tar", build_tar_phases, frozen_base=True).frozen_base
    True
"""

from __future__ import annotations

from typing import Any

from jaxtar.config import save_config
from jaxtar.defenses._inputs import (
    check_tokenizer,
    checkpoint_sha256,
    data_identity,
    load_model,
    model_source,
    params_sha256,
)
from jaxtar.defenses.runner import Defence, Loaded


def load_decoder(config: Any) -> Loaded:
    """`jaxtar.defenses.runner.Loaded` for a decoder defence (TAR, random mapping): ``config.model`` loaded and
    checked, with the checkpoint's content hash."""
    model, params, tokenizer = load_model(config.model)
    return Loaded(model, params, tokenizer, checkpoint_sha256(model_source(config.model)))


def given_model(model: Any, params: Any, tokenizer: Any) -> Loaded | None:
    """`Loaded` for weights handed in directly (all three or none: None), the tokenizer checked."""
    if model is None and params is None and tokenizer is None:
        return None
    if model is None or params is None or tokenizer is None:
        raise ValueError("pass model, params and tokenizer together (or none to load config.model)")
    check_tokenizer(model, tokenizer)
    return Loaded(model, params, tokenizer, params_sha256(params))


def decoder_defence(name: str, build: Any, *, frozen_base: bool = False) -> Defence:
    """A `jaxtar.defenses.runner.Defence` for a decoder LM and a `DefenceConfig` (TAR, random mapping): the model
    from ``config.model``, data identities from ``config.data``, ``build(config, model, params, tokenizer, mesh)
    -> (phases, extra)``."""
    return Defence(
        name,
        load=load_decoder,
        build=lambda config, model, params, tokenizer, mesh: build(config, model, params, tokenizer, mesh)[0],
        data_identity=lambda config: data_identity(config.data),
        write_config=save_config,
        frozen_base=frozen_base,
    )
