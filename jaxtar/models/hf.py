"""Hugging Face checkpoints in: ``from_pretrained`` / ``load_tokenizer`` over safetensors (``save_pretrained``, the
way out, is `jaxtar.models.hf_save`).

Loading is strict and streaming: every checkpoint key must match exactly one rule of the family's table (or be
explicitly ignored), every leaf must be filled, every shape is checked against the header before any tensor is read,
and tensors are read one at a time, cast and placed with the requested sharding, so a large model never needs two
full copies in host memory (`jaxtar.models.streaming`, shared with GGUF files). Only safetensors are read (pickle
can execute code); remote code is never run. What a folder may claim (config field types, shard index, header byte
ranges, host memory needed) and how an export reaches its folder without touching anyone else's files are checked
in ``jaxtar.models.hf_checks``.

Example:
    >>> import tempfile
    >>> from jaxtar.models import LlamaConfig, create_model, save_pretrained
    >>> model, params = create_model(LlamaConfig.tiny(), seed=0)
    >>> folder = save_pretrained(model, params, Path(tempfile.mkdtemp()) / "defended")  # transformers loads it
    >>> loaded, loaded_params = from_pretrained(folder, dtype=jnp.bfloat16)
    >>> loaded.config == model.config, loaded_params["embed"]["embedding"].dtype
    (True, dtype(bfloat16))
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors

from jaxtar.errors import CheckpointError
from jaxtar.models.functional import Model, Params, model_for_config
from jaxtar.models.hf_checks import local_name_error, read_header, read_index, validate_config
from jaxtar.models.registry import architecture_for
from jaxtar.models.rules import Rule
from jaxtar.models.streaming import ShardingSpec, stream_params

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]


def resolve_checkpoint(path_or_id: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder/file as is; otherwise a Hub repo id from the local cache, else downloaded.

    A missing name that is clearly a local path (see `hf_checks.local_name_error`, e.g. ``runs/tar`` where ``runs/``
    is a folder here) is an error, never looked up online.

    Raises:
        CheckpointError: a missing local path, or a Hub id neither in the cache nor downloadable (e.g. offline).
    """
    path = Path(path_or_id).expanduser()
    if path.exists():
        return path
    name = str(path_or_id)
    local = local_name_error(name)
    if local is not None:
        raise local
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached; try the network below
        pass
    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=HUB_PATTERNS))
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(
            f"could not get {name!r} from the Hugging Face Hub ({type(err).__name__}: {str(err)[:200]}). "
            f"On a machine with access run `huggingface-cli download {name}` and copy the folder here, "
            "then pass its path (or set HF_HOME to a cache that holds it)."
        ) from err


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` as a dict; refuses configs that ask for remote code or have wrongly typed fields."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder} has no config.json: not a Hugging Face model folder")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_path} is not valid JSON: {err}") from err
    validate_config(config, config_path)
    if "auto_map" in config:
        raise CheckpointError(
            f"{config_path} asks for custom code (auto_map); jaxtar never runs code from a checkpoint "
            "(no trust_remote_code). Use a model type jaxtar ports natively."
        )
    return config


def _weight_files(folder: Path) -> tuple[Path, dict[str, Path], dict[str, tuple[str, tuple[int, ...]]]]:
    """The index or single file, each tensor name's safetensors file, and each tensor's ``(dtype, shape)``.

    Every header is checked (`hf_checks.read_header`); with an index, each shard must hold exactly its keys.
    """
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.is_file():
        weight_map = read_index(index)
        files = {k: folder / v for k, v in weight_map.items()}
        missing = sorted({v for v in weight_map.values() if not (folder / v).is_file()})
        if missing:
            raise CheckpointError(f"{index} lists shard files that are missing: {missing}")
        shards = {shard: read_header(shard) for shard in sorted(set(files.values()))}
        for key, shard in sorted(files.items()):
            if key not in shards[shard]:
                raise CheckpointError(f"{index} puts {key} in {shard}, which lacks it")
        for shard, header in shards.items():
            extra = sorted(k for k in header if files.get(k) != shard)
            if extra:
                raise CheckpointError(f"{shard} holds {extra[:5]}, not in {index} for it")
        return index, files, {k: v for header in shards.values() for k, v in header.items()}
    if single.is_file():
        header = read_header(single)
        return single, {k: single for k in header}, header
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{folder} holds only pickle weights ({', '.join(pickles)}). jaxtar loads safetensors only, because "
            "unpickling can execute arbitrary code. Convert once in a trusted environment: "
            "`AutoModel.from_pretrained(folder).save_pretrained(out, safe_serialization=True)`."
        )
    raise CheckpointError(f"{folder} has no model.safetensors or model.safetensors.index.json")


def _open(path: Path) -> Any:
    try:
        return safetensors.safe_open(str(path), framework="flax")
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from err


def load_params(
    model: Model,
    folder: Path,
    rules: list[Rule],
    ignore: list[str],
    *,
    dtype: Any = jnp.float32,
    sharding: ShardingSpec = None,
    allow_nonfinite: bool = False,
) -> Params:
    """Streams the safetensors of ``folder`` into ``model``'s params tree (see the module docstring)."""
    weights, files, headers = _weight_files(folder)
    cpu = jax.local_devices(backend="cpu")[0]
    with contextlib.ExitStack() as stack:
        handles: dict[Path, Any] = {}  # opened (mapped) on first read, after every check

        def get_tensor(key: str) -> np.ndarray:
            if files[key] not in handles:
                handles[files[key]] = stack.enter_context(_open(files[key]))
            with jax.default_device(cpu):
                try:
                    return np.asarray(handles[files[key]].get_tensor(key))
                except Exception as err:  # noqa: BLE001
                    raise CheckpointError(f"{folder}: could not read {key} (truncated file?): {err}") from err

        return stream_params(
            model, sorted(files), lambda key: headers[key][1], get_tensor, rules, ignore, source=str(weights),
            dtype=dtype, sharding=sharding, allow_nonfinite=allow_nonfinite,
        )  # fmt: skip


def from_pretrained(
    path_or_id: str | os.PathLike,
    *,
    dtype: Any = jnp.float32,
    sharding: ShardingSpec = None,
    revision: str | None = None,
    allow_nonfinite: bool = False,
) -> tuple[Model, Params]:
    """Loads a Hugging Face checkpoint (local folder, Hub id, or a ``.gguf`` file) into its jaxtar port.

    Args:
        path_or_id: a folder with ``config.json`` + safetensors, a Hub repo id, or a GGUF file.
        dtype: parameter dtype (e.g. ``jnp.bfloat16``).
        sharding: one ``Sharding`` for every leaf, or ``fn(path, shape) -> Sharding``; ``None`` = default device.
        revision: Hub revision (branch, tag or commit) for repo ids.
        allow_nonfinite: load NaN/inf weights with a warning instead of refusing them.

    Example:
        >>> model, params = from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct", dtype=jnp.bfloat16)  # doctest: +SKIP
        >>> model.config.num_layers, params["embed"]["embedding"].dtype  # doctest: +SKIP
        (30, dtype(bfloat16))
    """
    folder = resolve_checkpoint(path_or_id, revision)
    if folder.is_file() and folder.suffix == ".gguf":
        from jaxtar.models.gguf import load_gguf

        return load_gguf(folder, dtype=dtype, sharding=sharding, allow_nonfinite=allow_nonfinite)
    if folder.is_file():
        raise CheckpointError(f"{folder} is a file; pass the model folder (or a .gguf file)")
    config_dict = read_config(folder)
    try:
        arch = architecture_for(config_dict.get("model_type"))
        config = arch.config_from_hf(config_dict)
    except KeyError as err:
        raise CheckpointError(f"{folder}/config.json: missing field {err}") from err
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{folder}/config.json: {err}") from err
    model = model_for_config(config)
    params = load_params(model, folder, arch.rules(config), arch.ignore(config), dtype=dtype, sharding=sharding,
                         allow_nonfinite=allow_nonfinite)  # fmt: skip
    return model, params


def load_tokenizer(path_or_id: str | os.PathLike, revision: str | None = None) -> Any:
    """The tokenizer saved beside a checkpoint, through ``transformers.AutoTokenizer`` (no remote code)."""
    from transformers import AutoTokenizer

    folder = resolve_checkpoint(path_or_id, revision)
    if folder.is_file() and folder.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(folder.parent), gguf_file=folder.name, trust_remote_code=False)
    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
