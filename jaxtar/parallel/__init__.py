"""Meshes, shardings and processes: the same jitted meta-step on one device, many devices, or many hosts.

`jaxtar.parallel.mesh` lays arrays out over a `Mesh` (axes ``data``, ``fsdp``, ``adversary``);
`jaxtar.parallel.processes` starts the multi-process runtime and coordinates the processes of one run. Everything is
sharded `jax.jit` (GSPMD inserts the collectives); nothing here uses `jax.pmap`.

Example:
    >>> mesh = make_mesh(data=1, fsdp=1, adversary=1)
    >>> params = shard({"w": jnp.ones((4, 4))}, param_shardings({"w": jnp.ones((4, 4))}, mesh))
"""

import jax.numpy as jnp  # noqa: F401 - the example above

from jaxtar.config.run import DISTRIBUTED_MODES, check_coordinator_address
from jaxtar.parallel.mesh import (
    AXES,
    BATCH_AXES,
    batch_sharding,
    batch_shardings,
    fsdp_spec,
    global_batch_size,
    make_mesh,
    param_sharding_rule,
    param_shardings,
    put,
    replicated,
    shard,
    to_host,
    tree_bytes,
    with_shardings,
)
from jaxtar.parallel.processes import (
    CPU_POOL_THREADS,
    any_process,
    barrier,
    check_mesh_size,
    gather_json,
    initialize_distributed,
    is_main_process,
    on_main_process,
    process_share,
)

__all__ = [
    "AXES",
    "BATCH_AXES",
    "CPU_POOL_THREADS",
    "DISTRIBUTED_MODES",
    "any_process",
    "barrier",
    "batch_sharding",
    "batch_shardings",
    "check_coordinator_address",
    "check_mesh_size",
    "fsdp_spec",
    "gather_json",
    "global_batch_size",
    "initialize_distributed",
    "is_main_process",
    "make_mesh",
    "on_main_process",
    "process_share",
    "param_sharding_rule",
    "param_shardings",
    "put",
    "replicated",
    "shard",
    "to_host",
    "tree_bytes",
    "with_shardings",
]
