"""Where and how a run executes: :class:`RunConfig`, the ``run`` section every defence (TAR, random mapping, the
baselines, MLAC) shares — its folder, seed, checkpoints, logs, device mesh and the processes it spans
(:class:`ProcessesConfig`, alone the ``run`` section of the red team, ``eval`` and ``bench``).

Example:
    >>> RunConfig(mesh_data=2, mesh_fsdp=2).mesh_data
    2
    >>> check_coordinator_address("node-0:1234")
    ('node-0', 1234)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from jaxtar.config.sections import check_values, non_negative, one_of, positive
from jaxtar.errors import ConfigError

DISTRIBUTED_MODES = ("auto", "on", "off")
_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")


def check_coordinator_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of a ``HOST:PORT`` coordinator address (an IPv6 host in brackets); `ConfigError` otherwise.

    Example:
        >>> check_coordinator_address("node-0:1234")
        ('node-0', 1234)
    """
    match = _ADDRESS.match(address or "")
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise ConfigError(f"coordinator address must be HOST:PORT (port 1..65535), got {address!r}")
    return match.group(1).strip("[]"), int(match.group(2))


@dataclass(frozen=True)
class ProcessesConfig:
    """The processes a command spans (JAX's multi-process runtime): the ``run`` section of ``jaxtar redteam``,
    ``eval`` and ``bench``, and part of every defence's `RunConfig`. Flags: ``--run.distributed``,
    ``--run.coordinator``, ``--run.num-processes``, ``--run.process-id``, ``--run.coordinator-timeout``.

    Args:
        distributed: start JAX's multi-process runtime (`jaxtar.parallel.initialize_distributed`): ``auto`` when
            the coordinator fields below or the environment (Slurm, Open MPI, a TPU pod, ``JAX_COORDINATOR_ADDRESS``
            / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``) name several processes, ``on`` always, ``off`` never. The
            mesh then spans every process's devices; process 0 writes the outputs.
        coordinator: ``HOST:PORT`` of process 0's coordination service (None: from the environment).
        num_processes: processes in the run (None: from the environment).
        process_id: this process's index in ``[0, num_processes)`` (None: from the environment).
        coordinator_timeout: seconds to wait at start-up for the coordinator and the other processes before giving
            up with an error (exit 2).

    Example:
        >>> ProcessesConfig(coordinator="node-0:1234", num_processes=2, process_id=1).process_id
        1
    """

    distributed: str = "auto"
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    coordinator_timeout: int = 120

    def __post_init__(self) -> None:
        check_values(self)
        positive(self, "num_processes", "coordinator_timeout")
        one_of(self, "distributed", DISTRIBUTED_MODES)
        if self.process_id is not None and not (
            0 <= self.process_id < (self.num_processes if self.num_processes is not None else self.process_id + 1)
        ):
            limit = f"[0, {self.num_processes})" if self.num_processes is not None else ">= 0"
            raise ConfigError(f"{type(self).__name__}.process_id must be in {limit}, got {self.process_id}")
        if self.coordinator is not None:
            check_coordinator_address(self.coordinator)
        given = [n for n in ("coordinator", "num_processes", "process_id") if getattr(self, n) is not None]
        if self.distributed == "off" and given:
            raise ConfigError(
                f"{type(self).__name__}.distributed is 'off' but {', '.join(given)} is set; use 'auto' or 'on'"
            )


@dataclass(frozen=True)
class RunConfig(ProcessesConfig):
    """Where and how a run executes (not part of a run's identity: may change on ``--resume``).

    Args:
        output_dir: the run folder (checkpoints, metrics.jsonl, the exported model in ``model/``).
        seed: fixes the data order, adversary draws and every key (derived from (seed, step)).
        checkpoint_every: save a checkpoint every this many steps (and on SIGINT / SIGTERM).
        keep_checkpoints: how many recent checkpoints to keep.
        log_every: write a metrics line every this many steps.
        progress: show a tqdm progress bar.
        tensorboard: also write TensorBoard events when ``tensorboardX`` or ``torch.utils.tensorboard`` is installed.
        resume: continue the run in ``output_dir`` from its latest checkpoint.
        export: write the final model as an HF checkpoint to ``output_dir/model``.
        mesh_data, mesh_fsdp, mesh_adversary: a (data, fsdp, adversary) device mesh (`jaxtar.parallel.make_mesh`):
            batches split across data x fsdp, params and optimiser state FSDP-sharded, TAR's adversaries split
            across adversary. All 1: one device.
        force: run even when the memory planner predicts that the run does not fit the devices' memory.
        distributed: start JAX's multi-process runtime (`jaxtar.parallel.initialize_distributed`): ``auto`` when
            the coordinator fields below or the environment (Slurm, Open MPI, a TPU pod, ``JAX_COORDINATOR_ADDRESS``
            / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``) name several processes, ``on`` always, ``off`` never. The
            mesh then spans every process's devices; process 0 writes the run folder.
        coordinator: ``HOST:PORT`` of process 0's coordination service (None: from the environment).
        num_processes: processes in the run (None: from the environment).
        process_id: this process's index in ``[0, num_processes)`` (None: from the environment).
        coordinator_timeout: seconds to wait at start-up for the coordinator and the other processes before giving
            up with an error (exit 2).
        compilation_cache: keep compiled steps in JAX's persistent compilation cache, ``.jaxtar-xla-cache`` beside
            the run folder, so a resume or the next run with the same shapes skips compilation (a cache the user set,
            e.g. ``JAX_COMPILATION_CACHE_DIR``, is used instead). The cache is trusted code: keep it in your own folder.
    """

    output_dir: str | None = None
    seed: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 1
    progress: bool = True
    tensorboard: bool = True
    resume: bool = False
    export: bool = True
    mesh_data: int = 1
    mesh_fsdp: int = 1
    mesh_adversary: int = 1
    force: bool = False
    compilation_cache: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()  # the processes' fields (and every field's type)
        positive(self, "checkpoint_every", "keep_checkpoints", "log_every", "mesh_data", "mesh_fsdp", "mesh_adversary")
        non_negative(self, "seed")
