"""The cost of JAX's multi-process runtime on CPU, two measurements:

1. one TAR outer step on 1 process x 8 simulated CPU devices vs 2 processes x 4 (gloo CPU collectives), the same
   (data 2, fsdp 2, adversary 2) mesh and inputs: a step is timed from dispatch to all outputs ready, after one
   compiling step; the median of the timed steps is reported;
2. weak scaling of the red-team grid: ``jaxtar redteam`` of 1 model x 2 adversaries on 1 process against 2 models x 2
   adversaries on 2 processes (``--run.*`` flags; each process runs half the grid), wall clock of the whole command
   (start-up, compilation, attacks, gathering, report), plus the 2-model grid on 1 process for reference. Ideal weak
   scaling keeps the wall clock: efficiency = T(1 process, J jobs) / T(2 processes, 2J jobs).

On CPU this is a correctness path (the speed that matters is on accelerators): the ratios say what the process
boundary costs here, nothing about GPUs or TPUs. Each configuration runs in fresh processes. On a 2-core machine one
process already uses both cores (XLA's intra-op threads), so two processes share them and weak scaling cannot be
near 1 there: read the efficiency against the number of cores.

Usage:
    python benchmarks/bench_scale.py [--steps 5] [--attack-steps 20] [--out benchmarks/results/bench_scale.json]
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
import tempfile
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


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1",
                PYTHONPATH=str(_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)  # fmt: skip


def _run_processes(cmds: list[list[str]], env: dict[str, str], what: str) -> list[str]:
    """Starts every command at once, waits for all (killing any left on the way out) and returns their stdouts;
    a non-zero exit stops the benchmark with that process's stderr."""
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    try:
        outs = [p.communicate(timeout=1800) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise SystemExit(f"{what} exited {p.returncode}:\n{err[-3000:]}")
    return [out for out, _ in outs]


def run_config(num_processes: int, devices_each: int, steps: int) -> dict:
    """Starts one configuration's processes and returns process 0's timings."""
    env = _env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_each} "
                         "--xla_cpu_collective_call_terminate_timeout_seconds=900")  # fmt: skip
    port = _free_port()
    cmd = lambda i: [sys.executable, __file__, "--worker", str(num_processes), str(i), str(port), str(steps)]  # noqa: E731
    outs = _run_processes([cmd(i) for i in range(num_processes)], env, "a worker")
    return json.loads(outs[0].strip().splitlines()[-1])


def run_redteam(num_processes: int, models: int, attack_steps: int, out: Path) -> float:
    """Wall clock of one ``jaxtar redteam`` of ``models`` copies of the toy model x 2 adversaries on
    ``num_processes`` processes (1 device each)."""
    port = _free_port()
    launch = "import sys; from jaxtar.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ["redteam", *(f"m{i}=toy" for i in range(models)), "--suite", "toy", "--only",
            "toy-adamw-1e-3,toy-nesterov-3e-2", "--steps", str(attack_steps), "--mcq-limit", "40", "--no-progress",
            "--out", str(out)]  # fmt: skip
    mp = lambda i: ["--run.coordinator", f"localhost:{port}", "--run.num-processes", str(num_processes),  # noqa: E731
                    "--run.process-id", str(i)] if num_processes > 1 else []  # fmt: skip
    start = time.perf_counter()
    cmds = [[sys.executable, "-c", launch, *args, *mp(i)] for i in range(num_processes)]
    _run_processes(cmds, _env(), "a red-team process")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration (after one compiling)")
    parser.add_argument("--attack-steps", type=int, default=20, help="steps of each red-team attack")
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
    with tempfile.TemporaryDirectory() as tmp:
        weak = {
            "1 process, 1 model x 2 adversaries": run_redteam(1, 1, args.attack_steps, Path(tmp) / "a"),
            "2 processes, 2 models x 2 adversaries": run_redteam(2, 2, args.attack_steps, Path(tmp) / "b"),
            "1 process, 2 models x 2 adversaries": run_redteam(1, 2, args.attack_steps, Path(tmp) / "c"),
        }
    one, two = weak["1 process, 1 model x 2 adversaries"], weak["2 processes, 2 models x 2 adversaries"]
    print(f"\njaxtar redteam, toy model, 2 adversaries x {args.attack_steps} steps per model, 1 device per process: "
          f"wall clock of the whole command")  # fmt: skip
    print(f"{'configuration':<40}{'wall s':>9}")
    for name, seconds in weak.items():
        print(f"{name:<40}{seconds:>9.1f}")
    print(
        f"weak-scaling efficiency T(1 process, 2 jobs) / T(2 processes, 4 jobs) = {one / two:.2f}; "
        f"2 processes vs 1 on the 4-job grid: {weak['1 process, 2 models x 2 adversaries'] / two:.2f}x"
    )
    if args.out:
        result = {"load_average": load, "cpus": os.cpu_count(), "steps": args.steps, "configurations": rows,
                  "overhead_ratio": statistics.median(rows["2 processes x 4 devices"]["step_s"]) / base,
                  "attack_steps": args.attack_steps, "redteam_wall_s": weak,
                  "weak_scaling_efficiency": one / two}  # fmt: skip
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
