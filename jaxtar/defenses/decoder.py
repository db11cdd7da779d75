"""Decoder-LM defences (TAR, random mapping) as values of the one runner: their model from ``config.model``, the
content hashes a resume compares, and the `Defence` they share.

Example:
    >>> from jaxtar.defenses.tar import build_tar_phases
    >>> decoder_defence("tar", build_tar_phases, frozen_base=True).frozen_base
    True
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxtar.config import save_config
from jaxtar.defenses._inputs import (
    check_tokenizer,
    checkpoint_sha256,
    data_identity,
    load_model,
    model_source,
    params_sha256,
)
from jaxtar.defenses.provenance import started_from
from jaxtar.defenses.runner import Defence, Loaded
from jaxtar.errors import InputError
from jaxtar.toy.named_models import resolve_model


def load_decoder(config: Any, estimator: str | None = None, mesh: Any = None) -> Loaded:
    """`jaxtar.defenses.runner.Loaded` for a decoder defence (TAR, random mapping): ``config.model`` loaded and
    checked, with the checkpoint's content hash, running ``config.model.attention_impl`` (``estimator``: the
    meta-gradient estimator the run differentiates with, which may rule out cuDNN's attention). With a ``mesh``
    each tensor is streamed straight into its FSDP shards (across processes: each fills its own)."""
    from jaxtar.models.layers import with_attention_impl
    from jaxtar.parallel import param_sharding_rule

    model, params, tokenizer = load_model(config.model, None if mesh is None else param_sharding_rule(mesh))
    try:
        model = with_attention_impl(model, config.model.attention_impl, estimator)
    except ValueError as err:  # cudnn without a GPU
        raise InputError(f"model.attention_impl: {err}") from err
    source = model_source(config.model)
    return Loaded(model, params, tokenizer, checkpoint_sha256(source), str(source))


def load_retain_anchor(config: Any, loaded: Loaded, mesh: Any = None) -> Loaded | None:
    """TAR's frozen representation anchor as ``config.tar.retain_anchor`` names it: None for ``start`` (the
    starting weights), else the model loaded once (``base``: the one the starting export was made from, read from
    its ``jaxtar_provenance.json``), with a ``mesh`` streamed straight into its FSDP shards like the model.

    Raises:
        InputError: no provenance for ``base``, a model that cannot be loaded, or one with other parameter shapes.
    """
    from jaxtar.models import CheckpointError, from_pretrained
    from jaxtar.parallel import param_sharding_rule

    spec = config.tar.retain_anchor
    if spec == "start":
        return None
    if spec == "base":
        if loaded.source is None:
            raise InputError("tar.retain_anchor base: the weights were handed in directly; name the anchor model")
        spec = started_from(loaded.source)
    source = resolve_model(spec)
    try:
        model, params = from_pretrained(source, dtype=getattr(jnp, config.model.dtype),
                                        sharding=None if mesh is None else param_sharding_rule(mesh),
                                        allow_nonfinite=config.model.allow_nonfinite)  # fmt: skip
    except CheckpointError as err:
        raise InputError(f"tar.retain_anchor {spec!r}: {err}") from err
    shapes = [jax.tree.map(lambda x: tuple(x.shape), p) for p in (params, loaded.params)]
    if model.config.model_type != loaded.model.config.model_type or shapes[0] != shapes[1]:
        raise InputError(
            f"tar.retain_anchor {spec!r} is not the same architecture as the model ({model.config.model_type} vs "
            f"{loaded.model.config.model_type}, or other parameter shapes): the representation loss compares "
            "their hidden states layer by layer"
        )
    return Loaded(model, params, None, checkpoint_sha256(source), str(source))


def given_model(model: Any, params: Any, tokenizer: Any) -> Loaded | None:
    """`Loaded` for weights handed in directly (all three or none: None), the tokenizer checked."""
    if model is None and params is None and tokenizer is None:
        return None
    if model is None or params is None or tokenizer is None:
        raise ValueError("pass model, params and tokenizer together (or none to load config.model)")
    check_tokenizer(model, tokenizer)
    return Loaded(model, params, tokenizer, params_sha256(params))


def decoder_defence(
    name: str, build: Any, *, frozen_base: bool = False, load_anchor: Any = None, estimator_of: Any = None
) -> Defence:
    """A `jaxtar.defenses.runner.Defence` for a decoder LM and a `DefenceConfig` (TAR, random mapping): the model
    from ``config.model``, data identities from ``config.data``, ``build(config, model, params, tokenizer, mesh)
    -> (phases, extra)``; ``frozen_base`` / ``load_anchor``: see `Defence`; ``estimator_of(config)``: the
    meta-gradient estimator of a run that differentiates through attacks (TAR)."""
    return Defence(
        name,
        load=lambda config, mesh: load_decoder(config, estimator_of(config) if estimator_of else None, mesh),
        build=lambda config, model, params, tokenizer, mesh: build(config, model, params, tokenizer, mesh)[0],
        data_identity=lambda config: data_identity(config.data),
        write_config=save_config,
        frozen_base=frozen_base,
        load_anchor=load_anchor,
    )
