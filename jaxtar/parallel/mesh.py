"""Meshes and shardings: how arrays are laid out over a `Mesh` of the devices of one process or of many.

A `Mesh` has three named axes:

* ``data``      - the batch axis of every attack / tamper / retain batch is split across it;
* ``fsdp``      - parameters and optimiser state are sharded along it (one large dimension per array); the batch
                  is split across it too, as in ZeRO-3 / FSDP full-shard;
* ``adversary`` - the leading axis of vmapped adversary groups is split across it.

Example:
    >>> mesh = make_mesh(data=1, fsdp=1, adversary=1)
    >>> params = shard({"w": jnp.ones((4, 4))}, param_shardings({"w": jnp.ones((4, 4))}, mesh))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any
AXES = ("data", "fsdp", "adversary")
BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = 1, fsdp: int = 1, adversary: int = 1, *, devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, fsdp, adversary) mesh over the first data*fsdp*adversary devices (with several processes:
    `jax.devices()` lists every process's devices, process by process).

    Example:
        >>> make_mesh().axis_names
        ('data', 'fsdp', 'adversary')
    """
    sizes = (data, fsdp, adversary)
    if min(sizes) < 1:
        raise ValueError(f"mesh axis sizes must be >= 1, got data={data} fsdp={fsdp} adversary={adversary}")
    devices = list(jax.devices() if devices is None else devices)
    need = data * fsdp * adversary
    if need > len(devices):
        raise ValueError(f"mesh data*fsdp*adversary = {need} exceeds the {len(devices)} available devices")
    grid = np.asarray(devices[:need], dtype=object).reshape(sizes)
    return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * 3)


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int = 1024) -> P:
    """The FSDP rule: shard the largest dimension divisible by `fsdp_size` (not the stacked-layer axis 0 of a
    >=3-D array, which `lax.scan` slices), if the array has at least `min_size` elements; else replicate.

    Example:
        >>> tuple(fsdp_spec((2, 64, 128), 4)), tuple(fsdp_spec((128, 64), 4))
        ((None, None, 'fsdp'), ('fsdp',))
    """
    if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    first = 1 if len(shape) >= 3 else 0
    candidates = [i for i in range(first, len(shape)) if shape[i] % fsdp_size == 0]
    if not candidates:
        return P()
    best = max(candidates, key=lambda i: (shape[i], i))
    # no trailing Nones: P("fsdp") is how a jitted step reports the same placement of its outputs, and an equal
    # but differently written spec would compile the step again for its second call
    return P(*[None] * best, "fsdp")


def param_shardings(tree: PyTree, mesh: Mesh, min_size: int = 1024) -> PyTree:
    """FSDP `NamedSharding`s for params (or any pytree of arrays / ShapeDtypeStructs, e.g. optimiser state:
    the rule depends only on shapes, so Adam's moments follow their parameters)."""
    rule = param_sharding_rule(mesh, min_size)
    return jax.tree.map(lambda x: rule((), tuple(x.shape)), tree)


def param_sharding_rule(mesh: Mesh, min_size: int = 1024) -> Callable[[tuple[str, ...], tuple[int, ...]], Any]:
    """`param_shardings`' rule as ``fn(path, shape) -> NamedSharding``: what `jaxtar.models.from_pretrained`'s
    ``sharding=`` takes to load each tensor straight into its FSDP shards.

    Example:
        >>> tuple(param_sharding_rule(make_mesh())(("embed",), (320, 128)).spec)
        ()
    """
    n = mesh.shape["fsdp"]
    return lambda path, shape: NamedSharding(mesh, fsdp_spec(tuple(shape), n, min_size))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int, batch_axis: int = 0, adversary_axis: int | None = None) -> NamedSharding:
    """Split `batch_axis` across (data, fsdp) and optionally `adversary_axis` across adversary.

    Example:
        >>> tuple(batch_sharding(make_mesh(), ndim=4, batch_axis=2, adversary_axis=0).spec)
        ('adversary', None, ('data', 'fsdp'), None)
    """
    spec: list[Any] = [None] * ndim
    spec[batch_axis] = BATCH_AXES
    if adversary_axis is not None:
        spec[adversary_axis] = "adversary"
    return NamedSharding(mesh, P(*spec))


def batch_shardings(tree: PyTree, mesh: Mesh, batch_axis: int = 0, adversary_axis: int | None = None) -> PyTree:
    """`batch_sharding` for every leaf of a batch pytree (leaves too small to split are replicated)."""
    div = mesh.shape["data"] * mesh.shape["fsdp"]
    n_adv = mesh.shape["adversary"]

    def one(x):
        spec: list[Any] = [None] * x.ndim
        if x.ndim > batch_axis and x.shape[batch_axis] % div == 0:
            spec[batch_axis] = BATCH_AXES
        if adversary_axis is not None and x.ndim > adversary_axis and x.shape[adversary_axis] % n_adv == 0:
            spec[adversary_axis] = "adversary"
        return NamedSharding(mesh, P(*spec))

    return jax.tree.map(one, tree)


def shard(tree: PyTree, shardings: PyTree) -> PyTree:
    """Place a pytree according to matching shardings (a single sharding applies to every leaf); shardings across
    processes take values every process holds alike (see `put`)."""
    if isinstance(shardings, jax.sharding.Sharding):
        if shardings.is_fully_addressable and not any(_is_lazy(x) for x in jax.tree.leaves(tree)):
            return jax.device_put(tree, shardings)
        return jax.tree.map(lambda x: put(x, shardings), tree)
    return jax.tree.map(put, tree, shardings)


def with_shardings(tree: PyTree, shardings: PyTree) -> PyTree:
    """`jax.lax.with_sharding_constraint` inside a jitted function (keeps e.g. optimiser state FSDP-sharded)."""
    return jax.lax.with_sharding_constraint(tree, shardings)


def put(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """``jax.device_put(x, sharding)`` that also works when ``sharding`` spans other processes' devices: a value
    every process holds alike (numpy, a process-local array, a scalar) becomes the global array with each process
    filling its own shards (`jax.make_array_from_callback`); a global array is resharded. A lazy host array (an
    object with ``shape`` and numpy-style ``x[index]``, e.g. `jaxtar.data.rows.TableRows`) is read only at the
    indices of this process's shards.

    Example:
        >>> put(np.arange(4.0), replicated(make_mesh())).shape
        (4,)
    """
    lazy = _is_lazy(x)
    if sharding.is_fully_addressable:
        return jax.device_put(np.asarray(x) if lazy else x, sharding)
    if lazy:
        return jax.make_array_from_callback(tuple(x.shape), sharding, lambda index: np.asarray(x[index]))
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x if x.sharding == sharding else jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        return jax.random.wrap_key_data(put(jax.random.key_data(x), sharding), impl=impl)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _is_lazy(x: Any) -> bool:
    """A host value read by index (`put`) rather than converted whole: not an array or scalar, but shaped and
    indexable."""
    return not isinstance(x, (np.ndarray, jax.Array, np.generic, int, float, bool)) and all(
        hasattr(x, attr) for attr in ("shape", "__getitem__", "__array__")
    )


def to_host(tree: PyTree) -> PyTree:
    """``tree`` as numpy arrays with their global values: arrays sharded across processes are gathered, so every
    process must call it (in the same order).

    Example:
        >>> to_host({"w": jnp.ones(2)})["w"].tolist()
        [1.0, 1.0]
    """
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)


def global_batch_size(mesh: Mesh, per_device: int) -> int:
    """Sequences per step when every (data, fsdp) device holds `per_device` of them."""
    return per_device * mesh.shape["data"] * mesh.shape["fsdp"]


def tree_bytes(tree: PyTree) -> int:
    """Total bytes of a pytree of arrays (global, not per device)."""
    return sum(int(np.prod(x.shape, dtype=np.int64)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
