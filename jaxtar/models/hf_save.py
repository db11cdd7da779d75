"""Hugging Face checkpoints out: ``save_pretrained`` writes what ``transformers`` loads unchanged.

The family's rule table (`jaxtar.models.registry`) runs in reverse: each leaf (each layer of a stacked leaf) becomes
one HF tensor in transformers' layout, materialised one at a time, written as ``config.json`` + safetensors (sharded
with an index past a size limit) into a staged folder that is renamed into place (`hf_checks.staged_export`).

Example:
    >>> import tempfile
    >>> from jaxtar.models import LlamaConfig, create_model, from_pretrained
    >>> model, params = create_model(LlamaConfig.tiny(), seed=0)
    >>> folder = save_pretrained(model, params, Path(tempfile.mkdtemp()) / "defended")  # transformers loads it
    >>> from_pretrained(folder)[0].config == model.config
    True
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.flax

from jaxtar.files import follow_umask
from jaxtar.models.functional import Model, Params
from jaxtar.models.hf_checks import staged_export
from jaxtar.models.registry import architecture_for
from jaxtar.models.streaming import param_leaves


def _hf_tensors(model: Model, params: Params) -> list[tuple[str, int, Callable[[], np.ndarray]]]:
    """``(hf_key, nbytes, materialise)`` for every checkpoint tensor, without materialising any yet."""
    arch = architecture_for(model.config.model_type)
    leaves = param_leaves(params)
    out = []
    for rule in arch.rules(model.config):
        leaf = leaves[rule.path]
        for layer in range(leaf.shape[0]) if rule.stacked else [None]:
            part = leaf[layer] if layer is not None else leaf

            def materialise(part=part, rule=rule) -> np.ndarray:
                return np.ascontiguousarray(rule.transform.to_hf(np.asarray(jax.device_get(part))))

            out.append((rule.key(layer), int(part.size * part.dtype.itemsize), materialise))
    return out


def hf_state_dict(model: Model, params: Params) -> dict[str, np.ndarray]:
    """The checkpoint as ``{hf_key: numpy array}`` in transformers' layout (e.g. to build a torch reference)."""
    return {key: materialise() for key, _, materialise in _hf_tensors(model, params)}


def save_pretrained(
    model: Model,
    params: Params,
    out_dir: str | os.PathLike,
    *,
    tokenizer: Any = None,
    max_shard_bytes: int = 4 * 1024**3,
    overwrite: bool = False,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Writes ``config.json`` + safetensors (sharded with an index past ``max_shard_bytes``) that transformers loads.

    The folder is written under a temporary name beside ``out_dir`` and renamed into place when complete, and only
    onto an absent or empty folder (`hf_checks.staged_export`): a non-empty ``out_dir`` is refused
    (`RunDirError`, also when another writer filled it meanwhile) unless ``overwrite=True`` and it holds a previous
    export, whose own files are then replaced (others stay). ``extra_files`` (``{name: text}``, e.g. a defence's
    ``jaxtar_provenance.json``) are written into the same staged folder. A symlink is written through. Every file
    gets the mode a plain write would (``0o666`` less the umask: 0644 at umask 022), the safetensors included.

    Example:
        >>> import tempfile
        >>> from jaxtar.models import GPT2Config, create_model
        >>> model, params = create_model(GPT2Config.tiny(), seed=0)
        >>> folder = save_pretrained(model, params, Path(tempfile.mkdtemp()) / "model", max_shard_bytes=400_000)
        >>> sorted(path.name for path in folder.glob("*.safetensors*"))   # two shards and their index
        ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']
        >>> tokenizer = load_tokenizer("openai-community/gpt2")  # doctest: +SKIP
        >>> folder = save_pretrained(model, params, folder, tokenizer=tokenizer, overwrite=True)  # doctest: +SKIP
    """
    arch = architecture_for(model.config.model_type)
    out_dir = Path(out_dir)
    config = arch.config_to_hf(model.config)
    with staged_export(out_dir, overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tensors = _hf_tensors(model, params)
        shards: list[list] = [[]]
        size = 0
        for entry in tensors:
            if shards[-1] and size + entry[1] > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(entry)
            size += entry[1]
        names = (
            ["model.safetensors"]
            if len(shards) == 1
            else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        )
        for name, shard in zip(names, shards, strict=True):  # one shard in host memory at a time
            with jax.default_device(jax.local_devices(backend="cpu")[0]):
                arrays = {key: jnp.asarray(materialise()) for key, _, materialise in shard}
                safetensors.flax.save_file(arrays, str(tmp / name), metadata={"format": "pt"})
                del arrays
        if len(shards) > 1:
            index = {
                "metadata": {"total_size": sum(nbytes for _, nbytes, _ in tensors)},
                "weight_map": {key: name for name, shard in zip(names, shards, strict=True) for key, _, _ in shard},
            }
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        for path in tmp.iterdir():  # safetensors writes 0600: every file gets a plain write's mode (0644 at umask 022)
            if path.is_file() and not path.is_symlink():
                follow_umask(path)
    return out_dir
