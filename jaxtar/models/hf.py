"""Hugging Face checkpoints in and out: ``from_pretrained`` / ``save_pretrained`` over safetensors.

Loading is strict and streaming: every checkpoint key must match exactly one rule of the family's table (or be
explicitly ignored), every leaf must be filled, every shape is checked against the header before any tensor is read,
and tensors are read one at a time, cast and placed with the requested sharding, so a large model never needs two
full copies in host memory. Only safetensors are read (pickle can execute code); remote code is never run. What a
folder may claim (config field types, shard index, header byte ranges, host memory needed) and how an export reaches
its folder without touching anyone else's files are checked in ``jaxtar.models.hf_checks``.

Example:
    >>> import tempfile
    >>> from jaxtar.models import LlamaConfig, create_model
    >>> model, params = create_model(LlamaConfig.tiny(), seed=0)
    >>> folder = save_pretrained(model, params, Path(tempfile.mkdtemp()) / "defended")  # transformers loads it
    >>> loaded, loaded_params = from_pretrained(folder, dtype=jnp.bfloat16)
    >>> loaded.config == model.config, loaded_params["embed"]["embedding"].dtype
    (True, dtype(bfloat16))
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.flax

from jaxtar.errors import CheckpointError
from jaxtar.models.functional import Model, Params, model_for_config
from jaxtar.models.hf_checks import (
    check_host_memory,
    local_name_error,
    read_header,
    read_index,
    staged_export,
    validate_config,
)
from jaxtar.models.registry import architecture_for
from jaxtar.models.rules import Rule, match_keys

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]
ShardingSpec = jax.sharding.Sharding | Callable[[tuple[str, ...], tuple[int, ...]], jax.sharding.Sharding] | None


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


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _leaves(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_leaves(v, (*prefix, k)))
        return out
    return {prefix: tree}


def _sharding_for(spec: ShardingSpec, path: tuple[str, ...], shape: tuple[int, ...]) -> Any:
    if spec is None:
        return None
    if isinstance(spec, jax.sharding.Sharding):
        return spec
    return spec(path, shape)


def _plan(model: Model, keys: list[str], rules: list[Rule], ignore: list[str], folder: Any):
    """Checks the key set against the table; returns ``{leaf path: [(key, rule, layer)]}`` and the leaf shapes."""
    matched, unknown = match_keys(keys, rules, ignore)
    if unknown:
        raise CheckpointError(f"{folder}: checkpoint keys no rule accounts for: {sorted(unknown)[:20]}")
    shapes = {p: tuple(a.shape) for p, a in _leaves(model.abstract_params()).items()}
    by_leaf: dict[tuple[str, ...], list] = defaultdict(list)
    seen: dict[tuple, str] = {}
    for key, (rule, layer) in matched.items():
        if (rule.path, layer) in seen:
            raise CheckpointError(f"{folder}: {key} and {seen[rule.path, layer]} both fill {rule.path} (layer {layer})")
        seen[rule.path, layer] = key
        if rule.path not in shapes:
            raise CheckpointError(f"{folder}: key {key} maps to {rule.path}, which this config does not have")
        by_leaf[rule.path].append((key, rule, layer))
    missing = []
    for rule in rules:
        shape = shapes.get(rule.path)
        if shape is None:
            raise CheckpointError(f"rule for {rule.hf_key} targets {rule.path}, absent from the model (table bug)")
        have = {layer for _, _, layer in by_leaf.get(rule.path, [])}
        want = set(range(shape[0])) if rule.stacked else {None}
        missing += [rule.key(i) for i in sorted(want - have, key=lambda x: -1 if x is None else x)]
        extra = have - want
        if extra:
            raise CheckpointError(f"{folder}: {rule.hf_key} has layers {sorted(extra)} beyond the config's {shape[0]}")
    if missing:
        raise CheckpointError(f"{folder}: checkpoint is missing keys: {missing[:20]}")
    return by_leaf, shapes


def stream_params(
    model: Model,
    keys: list[str],
    get_shape: Callable[[str], tuple[int, ...]],
    get_tensor: Callable[[str], np.ndarray],
    rules: list[Rule],
    ignore: list[str],
    *,
    source: str,
    dtype: Any = jnp.float32,
    sharding: ShardingSpec = None,
    allow_nonfinite: bool = False,
) -> Params:
    """Fills ``model``'s params tree from a keyed tensor source, strictly and one tensor at a time.

    Used for safetensors folders and GGUF files alike: keys are checked against ``rules`` first, then every shape
    and the host memory the load needs, and only then is any tensor read, transformed, cast to ``dtype`` and placed
    with ``sharding``. An integer/bool tensor for a float parameter is refused, and so are NaN/inf values unless
    ``allow_nonfinite`` (then they load with a warning).
    """
    by_leaf, shapes = _plan(model, keys, rules, ignore, source)
    for path, entries in by_leaf.items():  # every shape first, before any data is read
        for key, rule, _ in entries:
            want = tuple(rule.transform.hf_shape(shapes[path][1:] if rule.stacked else shapes[path]))
            got = tuple(get_shape(key))
            if got != want:
                raise CheckpointError(f"{source}: {key} has shape {got}, the config implies {want}")
    np_dtype = np.dtype(dtype)
    sizes = [math.prod(shapes[path]) * np_dtype.itemsize for path in by_leaf]
    on_host = isinstance(sharding, jax.sharding.Sharding) and all(d.platform == "cpu" for d in sharding.device_set)
    if on_host or (not isinstance(sharding, jax.sharding.Sharding) and jax.default_backend() == "cpu"):
        check_host_memory(sum(sizes), source, f"all parameters as {np_dtype.name}")
    else:  # parameters go to accelerators; the host stages one leaf at a time
        check_host_memory(max(sizes, default=0), source, f"the largest parameter as {np_dtype.name}")
    params: Params = {}
    nonfinite = []
    for path, entries in sorted(by_leaf.items()):
        buffer = np.empty(shapes[path], np_dtype)  # one leaf in host memory at a time
        for key, rule, layer in entries:
            raw = get_tensor(key)
            if raw.dtype.kind in "biu" and np_dtype.kind not in "biu":
                raise CheckpointError(
                    f"{source}: {key} is stored as {raw.dtype}, an integer/bool type, for a float parameter; "
                    "refusing to cast it"
                )
            value = rule.transform.to_ours(raw).astype(np_dtype)
            del raw
            if not np.isfinite(value).all():
                if not allow_nonfinite:
                    raise CheckpointError(
                        f"{source}: {key} holds NaN or inf values; pass allow_nonfinite=True to load it anyway"
                    )
                nonfinite.append(key)
            if layer is None:
                buffer[...] = value
            else:
                buffer[layer] = value
            del value
        _set(params, path, jax.device_put(buffer, _sharding_for(sharding, path, shapes[path])))
        del buffer
    if nonfinite:
        warnings.warn(f"{source}: loaded NaN or inf values in {len(nonfinite)} tensors: {nonfinite[:5]}", stacklevel=2)
    return params


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
    cpu = jax.devices("cpu")[0]
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


def _hf_tensors(model: Model, params: Params) -> list[tuple[str, int, Callable[[], np.ndarray]]]:
    """``(hf_key, nbytes, materialise)`` for every checkpoint tensor, without materialising any yet."""
    arch = architecture_for(model.config.model_type)
    leaves = _leaves(params)
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
) -> Path:
    """Writes ``config.json`` + safetensors (sharded with an index past ``max_shard_bytes``) that transformers loads.

    The folder is written under a temporary name beside ``out_dir`` and renamed into place when complete, and only
    onto an absent or empty folder (`hf_checks.staged_export`): a non-empty ``out_dir`` is refused
    (`RunDirError`, also when another writer filled it meanwhile) unless ``overwrite=True`` and it holds a previous
    export, whose own files are then replaced (others stay). A symlink is written through.

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
            with jax.default_device(jax.devices("cpu")[0]):
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
    return out_dir


def load_tokenizer(path_or_id: str | os.PathLike, revision: str | None = None) -> Any:
    """The tokenizer saved beside a checkpoint, through ``transformers.AutoTokenizer`` (no remote code)."""
    from transformers import AutoTokenizer

    folder = resolve_checkpoint(path_or_id, revision)
    if folder.is_file() and folder.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(folder.parent), gguf_file=folder.name, trust_remote_code=False)
    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
