"""The cost of JAX's multi-process runtime: one TAR outer step on 1 process x 8 simulated CPU devices vs 2 processes
x 4 (gloo CPU collectives), the same (data 2, fsdp 2, adversary 2) mesh and inputs.

On CPU this is a correctness path (the speed that matters is on accelerators): the ratio says what the process
boundary costs here, nothing about GPUs or TPUs. Each configuration runs in fresh processes; a step is timed from
dispatch to all outputs ready, after one compiling step; the median of the timed steps is reported.

Usage:
    python benchmarks/bench_scale.py [--steps 5] [--out benchmarks/results/bench_scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
# the toy preset, K = 4 inner steps, A = 2 adversaries (one per adversary shard), batches of 8 over data x fsdp = 4
OVERRIDES = {
    "tar.inner_steps": 4, "tar.tamper_every": 2, "tar.adversaries_per_step": 2, "tar.adversary_batch_size": 8,
    "tar.tamper_batch_size": 8, "tar.retain_batch_size": 8, "tar.warmup_steps": 0, "run.mesh_data": 2,
    "run.mesh_fsdp": 2, "run.mesh_adversary": 2,
}  # fmt: skip


def worker(num_processes: int, process_id: int, port: int, steps: int) -> None:
    """One process of a configuration: ``steps`` timed TAR outer steps after one compiling step."""
    from jaxtar.config import load_config
    from jaxtar.parallel import initialize_distributed

    extra = {}
    if num_processes > 1:
        extra = {"run.coordinator": f"localhost:{port}", "run.num_processes": num_processes,
                 "run.process_id": process_id}  # fmt: skip
    config = load_config("toy", {**OVERRIDES, **extra})
    initialize_distributed(run=config.run)

    import jax

    from jaxtar.defenses import build_tar_phases, load_model
    from jaxtar.defenses._loop import place, shard_batches, step_key
    from jaxtar.parallel import make_mesh, replicated, shard

    model, base, tokenizer = load_model(config.model)
    mesh = make_mesh(config.run.mesh_data, config.run.mesh_fsdp, config.run.mesh_adversary)
    params = place(base, mesh)
    phase = build_tar_phases(config, model, params, tokenizer, mesh)[0][0]
    state = place(phase.init_opt_state(params), mesh)
    frozen = params
    times = []
    for step in range(steps + 1):
        batches = jax.block_until_ready(shard_batches(phase.batches_fn(step), mesh, phase.batch_axes))
        key = jax.block_until_ready(shard(step_key(0, step), replicated(mesh)))
        start = time.perf_counter()
        params, state, metrics = jax.block_until_ready(phase.step_fn(params, state, batches, key, frozen))
        times.append(time.perf_counter() - start)
        print(f"process {jax.process_index()}: step {step} {times[-1]:.2f} s", file=sys.stderr, flush=True)
    if jax.process_index() == 0:
        print(json.dumps({"compile_step_s": times[0], "step_s": times[1:], "devices": jax.device_count(),
                          "processes": jax.process_count()}))  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_config(num_processes: int, devices_each: int, steps: int) -> dict:
    """Starts one configuration's processes and returns process 0's timings."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_each} "
                         "--xla_cpu_collective_call_terminate_timeout_seconds=900")  # fmt: skip
    port = _free_port()
    cmd = lambda i: [sys.executable, __file__, "--worker", str(num_processes), str(i), str(port), str(steps)]  # noqa: E731
    procs = [subprocess.Popen(cmd(i), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(num_processes)]  # fmt: skip
    try:
        outs = [p.communicate(timeout=1800) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise SystemExit(f"a worker exited {p.returncode}:\n{err[-3000:]}")
    return json.loads(outs[0][0].strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration (after one compiling)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--worker", nargs=4, type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(*args.worker)
        return
    load = os.getloadavg()[0]
    rows = {
        "1 process x 8 devices": run_config(1, 8, args.steps),
        "2 processes x 4 devices": run_config(2, 4, args.steps),
    }
    base = statistics.median(rows["1 process x 8 devices"]["step_s"])
    print(f"TAR outer step (toy preset, K=4, A=2, mesh data 2 x fsdp 2 x adversary 2) on {platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at the start; median of {args.steps} steps after "
          "compile")  # fmt: skip
    print(f"{'configuration':<26}{'median s/step':>15}{'compile step s':>16}{'ratio':>8}")
    for name, r in rows.items():
        med = statistics.median(r["step_s"])
        print(f"{name:<26}{med:>15.3f}{r['compile_step_s']:>16.1f}{med / base:>8.2f}")
    if args.out:
        result = {"load_average": load, "cpus": os.cpu_count(), "steps": args.steps, "configurations": rows,
                  "overhead_ratio": statistics.median(rows["2 processes x 4 devices"]["step_s"]) / base}  # fmt: skip
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
