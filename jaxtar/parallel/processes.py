"""The multi-process runtime: starting `jax.distributed` (`initialize_distributed`), and what the processes of one
run do together: barriers, agreeing on a flag, gathering JSON, one process writing for all (`on_main_process`).

Example:
    >>> initialize_distributed(), is_main_process()  # one process: nothing to start, and it is the main one
    (False, True)
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxtar.config.run import DISTRIBUTED_MODES, check_coordinator_address


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


def process_share(n: int) -> slice:
    """This process's contiguous share of ``n`` items (process ``i`` of ``P`` gets ``n*i//P .. n*(i+1)//P``), for
    work each process does on its part before the results are gathered (`gather_json`).

    Example:
        >>> process_share(10)  # one process: everything
        slice(0, 10, None)
    """
    count, index = jax.process_count(), jax.process_index()
    return slice(n * index // count, n * (index + 1) // count)


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
