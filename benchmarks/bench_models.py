"""Throughput of the model ports vs transformers PyTorch eager, same CPU, same weights, side by side.

Measures forward and forward+backward tokens/s (median of N timed runs after warm-up/compilation), and the trace +
compile time of a SmolLM2-135M-shaped model (30 scanned layers). Writes JSON and a markdown table to
benchmarks/results/. Not a test: nothing here asserts a speed.

    python benchmarks/bench_models.py            # full (a few minutes on 2 cores)
    python benchmarks/bench_models.py --quick    # small shapes, fewer repeats

Like bench_meta.py it restarts itself with glibc's huge-page tunable (`jaxtar.commands._hugepages`;
``--no-hugepages`` turns that off) and honours ``taskset``: PyTorch gets as many threads as the cores this process
may run on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxtar.commands import _hugepages as hugepages  # noqa: E402  (stdlib only: restarts before jax and torch load)

if __name__ == "__main__" and "--no-hugepages" not in sys.argv[1:]:
    hugepages.reexec_with_hugepages()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from bench_machine import second_call_seconds, usable_cores  # noqa: E402

from jaxtar.checkpoint import write_text_atomic  # noqa: E402
from jaxtar.models import LlamaConfig, create_model, save_pretrained  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _matmul_gflops(n: int = 1024, repeats: int = 5) -> dict[str, float]:
    """The machine's fp32 matmul rate in each framework (the ceiling for compute-bound configs)."""
    a = jnp.ones((n, n), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    mm(a).block_until_ready()
    jax_t = _median_time(lambda: mm(a).block_until_ready(), repeats)
    t = torch.ones(n, n)
    torch_t = _median_time(lambda: t @ t, repeats)
    flops = 2 * n**3
    return {"jax": flops / jax_t / 1e9, "torch": flops / torch_t / 1e9}


def bench_config(name: str, config: LlamaConfig, batch: int, length: int, repeats: int) -> dict:
    model, params = create_model(config, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, params, Path(tmp) / "m")
        torch_model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    ids_np = np.random.default_rng(0).integers(0, config.vocab_size, (batch, length))
    ids = jnp.asarray(ids_np)
    ids_t = torch.tensor(ids_np)
    tokens = batch * length

    def loss(p, i):
        logits = model.apply(p, i[:, :-1]).logits
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, i[:, 1:, None], axis=-1))

    forward = jax.jit(lambda p, i: model.apply(p, i).logits)
    fwd_bwd = jax.jit(jax.value_and_grad(loss))

    start = time.perf_counter()
    forward_compiled = forward.lower(params, ids).compile()
    compile_fwd = time.perf_counter() - start
    start = time.perf_counter()
    fwd_bwd_compiled = fwd_bwd.lower(params, ids).compile()
    compile_bwd = time.perf_counter() - start

    def jax_fwd():
        forward_compiled(params, ids).block_until_ready()

    def jax_bwd():
        jax.block_until_ready(fwd_bwd_compiled(params, ids))

    def torch_fwd():
        with torch.no_grad():
            torch_model(ids_t).logits.sum().item()

    def torch_bwd():
        torch_model.zero_grad(set_to_none=True)
        out = torch_model(ids_t[:, :-1]).logits
        torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), ids_t[:, 1:].reshape(-1)).backward()

    for fn in (jax_fwd, jax_bwd, torch_fwd, torch_bwd):
        fn()  # warm-up
    row = {"config": name, "batch": batch, "length": length, "compile_forward_s": compile_fwd,
           "compile_fwd_bwd_s": compile_bwd}  # fmt: skip
    # interleave the two frameworks so background load hits both alike; time the second of two calls (steady state)
    jf, tf, jb, tb = [], [], [], []
    for _ in range(repeats):
        jf.append(second_call_seconds(jax_fwd))
        tf.append(second_call_seconds(torch_fwd))
        jb.append(second_call_seconds(jax_bwd))
        tb.append(second_call_seconds(torch_bwd))
    for key, values in {"jax_fwd": jf, "torch_fwd": tf, "jax_fwd_bwd": jb, "torch_fwd_bwd": tb}.items():
        row[f"{key}_s"] = statistics.median(values)
        row[f"{key}_tok_s"] = tokens / statistics.median(values)
    row["speedup_fwd"] = row["torch_fwd_s"] / row["jax_fwd_s"]
    row["speedup_fwd_bwd"] = row["torch_fwd_bwd_s"] / row["jax_fwd_bwd_s"]
    n_params = sum(x.size for x in jax.tree.leaves(params))
    row["params_m"] = n_params / 1e6
    # 6 * params * tokens is the standard fwd+bwd estimate (plus attention, small at these lengths)
    row["jax_fwd_bwd_gflops"] = 6 * n_params * tokens / row["jax_fwd_bwd_s"] / 1e9
    row["torch_fwd_bwd_gflops"] = 6 * n_params * tokens / row["torch_fwd_bwd_s"] / 1e9
    return row


def trace_compile_smollm2(num_layers: int = 30) -> dict:
    """Trace + compile time of a fwd+bwd step for the 30-layer SmolLM2 shape: scanned layers keep it flat in depth."""
    config = LlamaConfig.smollm2_135m(num_layers=num_layers)
    model = create_model(config, seed=0)[0]
    abstract = model.abstract_params()
    ids = jax.ShapeDtypeStruct((1, 64), jnp.int32)

    def loss(p, i):
        return jnp.mean(model.apply(p, i).logits)

    start = time.perf_counter()
    lowered = jax.jit(jax.grad(loss)).lower(abstract, ids)
    traced = time.perf_counter() - start
    lowered.compile()
    return {"layers": num_layers, "trace_s": traced, "trace_compile_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-hugepages", action="store_true", help="do not restart with glibc's huge-page tunable")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help=f"where results go (default {RESULTS})")
    args = parser.parse_args()  # --no-hugepages is read before the imports, where the restart happens
    repeats = args.repeats or (3 if args.quick else 7)
    cores = usable_cores()
    torch.set_num_threads(cores)
    configs = [("tiny d=64 L=2", LlamaConfig.tiny(vocab_size=1024), 8, 64)]
    configs.append(("d=256 L=4", LlamaConfig.tiny(hidden_size=256, intermediate_size=768, num_layers=4,
                                                  num_heads=4, num_kv_heads=4, vocab_size=4096), 8, 128))  # fmt: skip
    if not args.quick:
        configs.append(("SmolLM2-135M shape", LlamaConfig.smollm2_135m(), 4, 128))
    machine = platform.processor() or platform.machine()
    device = f"{jax.devices()[0].device_kind} ({machine}, {cores} of {os.cpu_count()} cores)"
    report = {"device": device, "jax": jax.__version__, "torch": torch.__version__, "repeats": repeats,
              "hugepages": hugepages.status(), "load_average_start": os.getloadavg()[0],
              "matmul_gflops": _matmul_gflops(), "rows": [], "smollm2_compile": None}  # fmt: skip
    for name, config, batch, length in configs:
        row = bench_config(name, config, batch, length, repeats)
        report["rows"].append(row)
        print(f"{name}: fwd+bwd JAX {row['jax_fwd_bwd_tok_s']:.0f} tok/s vs torch {row['torch_fwd_bwd_tok_s']:.0f}")
    report["smollm2_compile"] = [trace_compile_smollm2(n) for n in ((2, 30) if not args.quick else (2, 8))]

    lines = [
        f"Device: {device}; jax {jax.__version__}, torch {torch.__version__}; median of {repeats} after compile; "
        f"{report['hugepages']}; load average at start {report['load_average_start']:.1f}.",
        f"Matmul rate (1024^3 fp32): JAX {report['matmul_gflops']['jax']:.0f} GFLOP/s, "
        f"torch {report['matmul_gflops']['torch']:.0f} GFLOP/s.",
        "",
        "| config | tokens | fwd JAX tok/s | fwd torch tok/s | fwd ratio | fwd+bwd JAX tok/s | fwd+bwd torch tok/s "
        "| fwd+bwd ratio | JAX GFLOP/s | torch GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['config']} | {r['batch']}x{r['length']} | {r['jax_fwd_tok_s']:.0f} | {r['torch_fwd_tok_s']:.0f} | "
            f"{r['speedup_fwd']:.2f}x | {r['jax_fwd_bwd_tok_s']:.0f} | {r['torch_fwd_bwd_tok_s']:.0f} | "
            f"{r['speedup_fwd_bwd']:.2f}x | {r['jax_fwd_bwd_gflops']:.0f} | {r['torch_fwd_bwd_gflops']:.0f} |"
        )
    lines += ["", "| SmolLM2 shape, fwd+bwd | trace s | trace+compile s |", "|---|---|---|"]
    for c in report["smollm2_compile"]:
        lines.append(f"| {c['layers']} layers | {c['trace_s']:.2f} | {c['trace_compile_s']:.2f} |")
    table = "\n".join(lines)
    print(table)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / ("models_quick" if args.quick else "models")
    for suffix, text in ((".json", json.dumps(report, indent=2) + "\n"), (".md", table + "\n")):
        write_text_atomic(stem.with_suffix(suffix), text)  # a killed run leaves the previous results intact


if __name__ == "__main__":
    main()
