"""Streaming a keyed tensor source into a model's params tree, strictly and one tensor at a time.

The core every checkpoint reader shares (safetensors folders in `jaxtar.models.hf`, GGUF files in
`jaxtar.models.gguf`): the keys are checked against the family's rule table (`jaxtar.models.rules`: every key
matched exactly once or explicitly ignored, every leaf filled), then every shape and the host memory the load needs
(`jaxtar.models.hf_checks.check_host_memory`), and only then is any tensor read, transformed, cast and placed with
the requested sharding, so a large model never needs two full copies in host memory.

Example (a checkpoint held in memory, streamed back into the model):
    >>> from jaxtar.models import LlamaConfig, create_model, hf_state_dict
    >>> from jaxtar.models.registry import architecture_for
    >>> model, params = create_model(LlamaConfig.tiny(), seed=0)
    >>> tensors = hf_state_dict(model, params)  # {hf_key: numpy array} in transformers' layout
    >>> arch = architecture_for("llama")
    >>> loaded = stream_params(model, sorted(tensors), lambda k: tensors[k].shape, tensors.__getitem__,
    ...                        arch.rules(model.config), arch.ignore(model.config), source="in memory")
    >>> bool((loaded["embed"]["embedding"] == params["embed"]["embedding"]).all())
    True
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtar.errors import CheckpointError
from jaxtar.models.functional import Model, Params
from jaxtar.models.hf_checks import check_host_memory
from jaxtar.models.rules import Rule, match_keys
from jaxtar.parallel import put

ShardingSpec = jax.sharding.Sharding | Callable[[tuple[str, ...], tuple[int, ...]], jax.sharding.Sharding] | None


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def param_leaves(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """``{path: leaf}`` of a nested dict (paths as tuples of keys)."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(param_leaves(v, (*prefix, k)))
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
    shapes = {p: tuple(a.shape) for p, a in param_leaves(model.abstract_params()).items()}
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
        target = _sharding_for(sharding, path, shapes[path])  # across processes: each fills only its own shards
        _set(params, path, jax.device_put(buffer) if target is None else put(buffer, target))
        del buffer
    if nonfinite:
        warnings.warn(f"{source}: loaded NaN or inf values in {len(nonfinite)} tensors: {nonfinite[:5]}", stacklevel=2)
    return params
