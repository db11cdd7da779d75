"""Meshes and shardings: the same jitted meta-step on one device, many devices, or many hosts.

A `Mesh` has three named axes:

* ``data``      - the batch axis of every attack / tamper / retain batch is split across it;
* ``fsdp``      - parameters and optimiser state are sharded along it (one large dimension per array); the batch
                  is split across it too, as in ZeRO-3 / FSDP full-shard;
* ``adversary`` - the leading axis of vmapped adversary groups is split across it.

Everything is sharded `jax.jit` (GSPMD inserts the collectives); nothing here uses `jax.pmap`.

Example:
    >>> mesh = make_mesh(data=1, fsdp=1, adversary=1)
    >>> params = shard({"w": jnp.ones((4, 4))}, param_shardings({"w": jnp.ones((4, 4))}, mesh))
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxtar.config.run import DISTRIBUTED_MODES, check_coordinator_address  # noqa: F401 - re-exported

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
        >>> tuple(fsdp_spec((2, 64, 128), 4))
        (None, None, 'fsdp')
    """
    if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    first = 1 if len(shape) >= 3 else 0
    candidates = [i for i in range(first, len(shape)) if shape[i] % fsdp_size == 0]
    if not candidates:
        return P()
    best = max(candidates, key=lambda i: (shape[i], i))
    return P(*[("fsdp" if i == best else None) for i in range(len(shape))])


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
        if shardings.is_fully_addressable:
            return jax.device_put(tree, shardings)
        return jax.tree.map(lambda x: put(x, shardings), tree)
    return jax.tree.map(put, tree, shardings)


def with_shardings(tree: PyTree, shardings: PyTree) -> PyTree:
    """`jax.lax.with_sharding_constraint` inside a jitted function (keeps e.g. optimiser state FSDP-sharded)."""
    return jax.lax.with_sharding_constraint(tree, shardings)


# ------------------------------------------------------------------------------------- across processes and hosts
def _env_int(name: str) -> int | None:
    from jaxtar.errors import ConfigError

    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def _cluster_size() -> int:
    """How many processes the cluster environment JAX detects declares (Slurm, Open MPI, a TPU pod, Kubernetes
    via JAX_NUM_PROCESSES); 1 when none does."""
    for name in ("JAX_NUM_PROCESSES", "SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE"):  # srun sets the 2nd
        n = _env_int(name)
        if n is not None:
            return n
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h]) or 1


def _wait_for_coordinator(host: str, port: int, timeout_s: float) -> None:
    """Returns once ``host:port`` accepts TCP connections; `ConfigError` after ``timeout_s`` seconds."""
    from jaxtar.errors import ConfigError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, max(timeout_s, 0.1))):
                return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"the coordinator {host}:{port} is unreachable ({err.strerror or err}) after {timeout_s:g} s; "
                    "start process 0 first, or check --run.coordinator (nothing was written)"
                ) from None
            time.sleep(0.2)


CPU_POOL_THREADS = 32


def _widen_cpu_thread_pool() -> None:
    """On a CPU-only run, at least `CPU_POOL_THREADS` threads in XLA's CPU intra-op pool (``PJRT_NPROC``; one set
    by the user wins).

    A CPU collective (gloo across processes, the in-process rendezvous within one) blocks the pool thread that runs
    it, and the pool is shared by the process's devices; XLA orders when collectives start, not when they end, so
    with several devices per process and a pool of about as many threads (the core count, or the device count) every
    thread can end up blocked in a collective whose peers need a thread of this pool to arrive. Observed on 2 cores:
    a hang in about half of the 2-process x 4-device TAR runs (each pool thread in a different collective) and in a
    1-process x 8-device run; none in the runs since with 32 threads. It acts only before the CPU backend starts.
    """
    platforms = str(jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", ""))
    if platforms.strip().lower() == "cpu" and not ({"PJRT_NPROC", "NPROC"} & set(os.environ)):
        os.environ["PJRT_NPROC"] = str(max(os.cpu_count() or 1, CPU_POOL_THREADS))


def check_mesh_size(sizes: Sequence[int]) -> None:
    """Refuses (`InputError`) a mesh that does not span every device of a multi-process run (a mesh over some
    processes' devices would leave the others without work); one process may use fewer devices than it has."""
    from jaxtar.errors import InputError

    need = int(np.prod(sizes))
    if jax.process_count() > 1 and need != jax.device_count():
        data, fsdp, adversary = sizes
        raise InputError(
            f"run.mesh_*: data {data} x fsdp {fsdp} x adversary {adversary} = {need} devices, but the "
            f"{jax.process_count()} processes have {jax.device_count()} devices in all "
            f"({jax.local_device_count()} each); a multi-process mesh must use every device (nothing was written)"
        )


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    mode: str = "auto",
    mesh: Sequence[int] | None = None,
    timeout_s: int = 120,
    force: bool = False,
    run: Any = None,
) -> bool:
    """The start-up of every run: `jax.distributed.initialize` when the run spans processes. Call it before any
    other JAX call (it is a no-op when the runtime is already up).

    ``mode`` ``auto`` starts the runtime for explicit arguments naming more than one process, or for an
    environment JAX detects that declares several (Slurm, Open MPI, a TPU pod slice, Kubernetes, or the standard
    ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` variables, which fill in arguments
    not given); ``on`` always starts it (JAX detects what is not given); ``off`` never does. On CPU it turns on
    CPU collectives (gloo), so processes on one machine form one mesh.

    Args:
        coordinator_address: ``HOST:PORT`` of process 0's coordination service.
        num_processes: processes in the run.
        process_id: this process's index in ``[0, num_processes)``.
        mode: ``auto``, ``on`` or ``off``.
        mesh: the run's (data, fsdp, adversary) sizes: with several processes their product must be the global
            device count.
        timeout_s: how long to wait for the coordinator and the other processes (bounded: no hang).
        force: same as ``mode="on"``.
        run: a `jaxtar.config.RunConfig` or `jaxtar.config.run.ProcessesConfig`: its ``coordinator``,
            ``num_processes``, ``process_id``, ``distributed``, ``coordinator_timeout`` (and a RunConfig's ``mesh_*``)
            fields replace the arguments above (what the commands pass).

    Returns:
        True if the distributed runtime is up (several processes), False for a single-process run.

    Raises:
        ConfigError: a bad mode, address or process id, an unreachable coordinator or processes that never joined
            within ``timeout_s``.
        InputError: a ``mesh`` that does not span the global devices.

    Example:
        >>> initialize_distributed()  # on a laptop: nothing to do
        False
    """
    from jaxtar.errors import ConfigError

    if run is not None:
        coordinator_address, num_processes, process_id = run.coordinator, run.num_processes, run.process_id
        mode = run.distributed
        if hasattr(run, "mesh_data"):  # a RunConfig; a ProcessesConfig (red team, eval, bench) has no mesh
            mesh = (run.mesh_data, run.mesh_fsdp, run.mesh_adversary)
        timeout_s = run.coordinator_timeout
    if mode not in DISTRIBUTED_MODES:
        raise ConfigError(f"run.distributed must be one of {DISTRIBUTED_MODES}, got {mode!r}")
    if jax.distributed.is_initialized():
        if mesh is not None:
            check_mesh_size(mesh)
        return jax.process_count() > 1
    if mode == "off" and not force:
        return False
    if coordinator_address is None:
        coordinator_address = os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = _env_int("JAX_NUM_PROCESSES") if num_processes is None else num_processes
    process_id = _env_int("JAX_PROCESS_ID") if process_id is None else process_id
    if num_processes is not None and num_processes < 1:
        raise ConfigError(f"the number of processes must be >= 1, got {num_processes}")
    if process_id is not None and not (0 <= process_id < (num_processes or _cluster_size())):
        raise ConfigError(
            f"process id {process_id} is out of range: it must be in [0, {num_processes or _cluster_size()})"
        )
    address = None if coordinator_address is None else check_coordinator_address(coordinator_address)
    wanted = force or mode == "on" or (num_processes or _cluster_size()) > 1
    if wanted or (mesh is not None and int(np.prod(mesh)) > 1):
        _widen_cpu_thread_pool()  # several CPU devices: one process's too (see there)
    if not wanted:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices' collectives (GPUs use NCCL)
    if address is not None and process_id not in (None, 0):
        _wait_for_coordinator(*address, timeout_s)  # a clear message instead of the runtime's
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=int(timeout_s),
        )
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"could not start the distributed runtime (coordinator {coordinator_address or 'auto-detected'}, "
            f"{num_processes or 'auto'} processes, process id {process_id if process_id is not None else 'auto'}) "
            f"within {timeout_s} s: {first} (nothing was written)"
        ) from err
    if mesh is not None:
        check_mesh_size(mesh)
    return jax.process_count() > 1


def is_main_process() -> bool:
    """Whether this is process 0, the one that writes run folders, logs, reports and exported models."""
    return jax.process_index() == 0


def put(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """``jax.device_put(x, sharding)`` that also works when ``sharding`` spans other processes' devices: a value
    every process holds alike (numpy, a process-local array, a scalar) becomes the global array with each process
    filling its own shards (`jax.make_array_from_callback`); a global array is resharded.

    Example:
        >>> put(np.arange(4.0), replicated(make_mesh())).shape
        (4,)
    """
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x if x.sharding == sharding else jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        return jax.random.wrap_key_data(put(jax.random.key_data(x), sharding), impl=impl)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


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


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is true on any process (a collective with several processes; every process must call it).

    Example:
        >>> any_process(False)
        False
    """
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))


def _broadcast_text(text: str) -> str:
    """Process 0's ``text``, on every process (a collective)."""
    from jax.experimental import multihost_utils

    data = np.frombuffer(text.encode(), np.uint8) if is_main_process() else np.zeros(0, np.uint8)
    n = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
    buffer = np.zeros(max(n, 1), np.uint8)
    buffer[: len(data)] = data[:n]
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer))[:n]).decode()


def gather_json(value: Any) -> list[Any]:
    """Every process's JSON-able ``value``, in process order, on every process (a collective; one process:
    ``[value]``).

    Example:
        >>> gather_json({"runs": 3})
        [{'runs': 3}]
    """
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(len(data)))).reshape(-1)
    buffer = np.zeros(max(int(sizes.max()), 1), np.uint8)
    buffer[: len(data)] = data
    rows = np.asarray(multihost_utils.process_allgather(buffer)).reshape(len(sizes), -1)
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, sizes, strict=True)]


def on_main_process(fn: Callable[[], Any], what: str) -> Any:
    """``fn()`` run by process 0 only; every other process waits for it (a barrier) and gets its result through JSON
    (with several processes every process gets the JSON round trip: a Path arrives as its ``str``), or raises the
    `jaxtar.errors` kind process 0 raised, with its message. One process: just ``fn()``.

    Example:
        >>> on_main_process(lambda: 3, "count")
        3
    """
    if jax.process_count() == 1:
        return fn()
    import jaxtar.errors as errors

    status: dict[str, Any] = {}
    failure: BaseException | None = None
    if is_main_process():
        try:
            status = {"value": fn()}
        except BaseException as err:  # reported to the others, then re-raised here
            failure = err
            kind = type(err).__name__ if isinstance(err, errors.JaxtarError) else "JaxtarError"
            status = {"error": kind, "message": str(err)}
    status = json.loads(_broadcast_text(json.dumps(status, default=str)))  # e.g. a Path: its str on every process
    if failure is not None:
        raise failure
    if "error" in status:
        kind = getattr(errors, status["error"], errors.JaxtarError)
        raise kind(f"process 0 could not {what}: {status['message']}")
    return status["value"]


def global_batch_size(mesh: Mesh, per_device: int) -> int:
    """Sequences per step when every (data, fsdp) device holds `per_device` of them."""
    return per_device * mesh.shape["data"] * mesh.shape["fsdp"]


def tree_bytes(tree: PyTree) -> int:
    """Total bytes of a pytree of arrays (global, not per device)."""
    return sum(int(np.prod(x.shape, dtype=np.int64)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
