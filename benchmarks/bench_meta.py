"""Meta-gradient throughput: every estimator vs K plain attack steps, side by side with PyTorch eager.

    python benchmarks/bench_meta.py --quick      # overhead-bound config, K = 4: a few minutes on a 2-core CPU
    python benchmarks/bench_meta.py              # + d=256 config, SmolLM2-135M shape, K in {4, 16, 64}

Writes benchmarks/results/bench_meta.{json,md,png}. Per (config, K, estimator): wall-clock (median of >= 5 after
compile), compile time, XLA's allocated bytes, matmul FLOPs (jaxpr count, scans multiplied out), each also as a
ratio to K plain AdamW attack steps; PyTorch eager plain / TAR-style first-order / exact create_graph on the same
shapes; vmapped adversary groups (A in {1, 4, 16}) vs loops; the machine's matmul rate. Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxtar.commands import _hugepages as hugepages  # noqa: E402  (stdlib only: restarts before jax and torch load)

if __name__ == "__main__" and "--no-hugepages" not in sys.argv[1:]:
    hugepages.reexec_with_hugepages()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_machine import usable_cores  # noqa: E402
from bench_meta_flops import count_flops  # noqa: E402
from bench_meta_report import write_report  # noqa: E402
from bench_meta_torch import TorchMeta  # noqa: E402

from jaxtar.attacks import Adversary, model_attack_problem, unroll  # noqa: E402
from jaxtar.meta import (  # noqa: E402
    AdversaryGroup,
    Estimator,
    TamperSchedule,
    Workload,
    compiled_peak_bytes,
    meta_value_and_grad,
    predict_peak_bytes,
    vmap_meta_value_and_grad,
)
from jaxtar.models import LlamaConfig, create_model  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
EVERY = 4  # TAR's subsample s
FO_FINAL = "first_order_final"  # first_order with a single tamper record after step K
OVERHEAD = LlamaConfig.tiny(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2
)
COMPUTE = LlamaConfig.tiny(
    vocab_size=2048,
    hidden_size=256,
    intermediate_size=768,
    num_layers=4,
    num_heads=4,
    num_kv_heads=4,
    max_position_embeddings=256,
)


def configs(quick: bool) -> dict[str, dict]:
    cfgs = {"overhead_d64_L2": dict(cfg=OVERHEAD, batch=4, seq=32, ks=(4,) if quick else (4, 16, 64))}
    if not quick:
        cfgs["tiny_d256_L4"] = dict(cfg=COMPUTE, batch=4, seq=128, ks=(4, 16, 64))
        cfgs["smollm2_135m"] = dict(cfg=LlamaConfig.smollm2_135m(), batch=2, seq=128, ks=(4, 16, 64))
    return cfgs


def estimators(k: int, quick: bool) -> dict[str, Estimator]:
    ests = {
        "exact": Estimator("exact"),
        "remat": Estimator("remat"),
        "remat_sqrtK": Estimator("remat", two_level=True),
        "mixed": Estimator("mixed"),
        "truncated_K/4": Estimator("truncated", truncation=max(1, k // 4)),
        "first_order": Estimator("first_order"),
        "tar": Estimator("tar"),
        # (remat with "dots_with_no_batch_dims_saveable" is the same program as `exact`, so it has no row of its own)
        "remat_grad": Estimator("remat", remat_policy="attack_grad_saveable"),
        # FO-MAML's own schedule: one tamper record after the last step ((K + 1) / K FLOPs,
        # docs/meta-gradients.md#cost-model)
        FO_FINAL: Estimator("first_order"),
    }
    if quick:
        for name in ("remat_sqrtK", "truncated_K/4", "remat_grad"):
            ests.pop(name)
    return ests


def torch_time(fn, reps: int) -> dict:
    """PyTorch at 1 thread and at all cores, the faster kept: OpenMP spin-waiting makes multi-threaded eager torch
    collapse on an oversubscribed CPU (measured here: 0.15 s with 1 thread vs 1-9 s with 2 for the same 4 steps)."""
    best = None
    for threads in sorted({1, usable_cores()}):
        torch.set_num_threads(threads)
        res = dict(time_fn(fn, reps), torch_threads=threads)
        if best is None or res["median_s"] < best["median_s"]:
            best = res
    return best


def _block(x):
    return jax.block_until_ready(x)


def time_fn(fn, reps: int) -> dict:
    """Median wall-clock of `fn()` over `reps` runs after one warm-up; peak RSS growth (Linux VmHWM)."""
    _reset_peak_rss()
    base = _rss()
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return dict(median_s=statistics.median(times), min_s=min(times), reps=reps, peak_rss_growth=_peak_rss() - base)


def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _status(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _rss() -> int:
    return _status("VmRSS")


def _peak_rss() -> int:
    return _status("VmHWM")


def jax_case(fn, args, reps: int, flops: bool = True) -> dict:
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t
    out = dict(compile_s=compile_s, bytes=compiled_peak_bytes(compiled))
    out.update(time_fn(lambda: _block(compiled(*args)), reps))
    if flops:
        out["flops"] = count_flops(fn, *args)
    return out


def matmul_rate(n: int = 1024, reps: int = 10) -> dict:
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    jx = time_fn(lambda: _block(f(a)), reps)["median_s"]
    ta = torch.as_tensor(np.array(a))
    tt = time_fn(lambda: torch.mm(ta, ta), reps)["median_s"]
    flops = 2 * n**3
    return dict(n=n, jax_gflops=flops / jx / 1e9, torch_gflops=flops / tt / 1e9)


def _lm_losses(model):
    def ce(p, ids, lora):
        logp = jax.nn.log_softmax(model.apply(p, ids, lora=lora).logits[:, :-1])
        return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))

    def neg_entropy(p, ids, lora):
        logp = jax.nn.log_softmax(model.apply(p, ids, lora=lora).logits)
        return jnp.mean(jnp.sum(jnp.exp(logp) * logp, axis=-1))

    return ce, neg_entropy


def bench_one(
    name: str, spec: dict, k: int, quick: bool, reps: int, mem_limit: int, only: tuple[str, ...] | None = None
) -> list[dict]:
    """Plain steps, every estimator and the PyTorch references for one (config, K)."""
    cfg, batch, seq = spec["cfg"], spec["batch"], spec["seq"]
    model, params = create_model(cfg, seed=0)
    ce, neg_entropy = _lm_losses(model)
    ids = jax.random.randint(jax.random.key(1), (k, batch, seq), 0, cfg.vocab_size)
    tamper = jax.random.randint(jax.random.key(2), (batch, seq), 0, cfg.vocab_size)
    adv = Adversary("adamw", lr=1e-3, weight_decay=0.01, steps=k)
    prob = model_attack_problem(adv, ce, neg_entropy, model=model)
    sched = TamperSchedule.tar(every=EVERY)
    work = Workload.for_llama(cfg, batch_size=batch, seq_len=seq, steps=k, records=k // EVERY)
    key = jax.random.key(0)
    base = dict(config=name, K=k, batch=batch, seq=seq, params=int(work.defended_params))
    rows = []
    print(f"[{name} K={k}] plain", flush=True)
    plain = jax_case(lambda p: unroll(prob, p, adv, ids, key=key).trainable, (params,), reps)
    rows.append(dict(base, framework="jax", method="plain", **plain))

    def meta_fn(est, schedule=sched):
        return lambda p: (
            meta_value_and_grad(prob, p, ids, tamper, adversary=adv, key=key, schedule=schedule, estimator=est).grads
        )

    for est_name, est in estimators(k, quick).items():
        if only and est_name not in only:
            continue
        predicted = predict_peak_bytes(work, est).total
        row = dict(base, framework="jax", method=est_name, predicted_bytes=predicted)
        if predicted > mem_limit:
            rows.append(dict(row, skipped=f"planner predicts {predicted / 2**30:.1f} GiB > limit"))
            continue
        print(f"[{name} K={k}] {est_name}", flush=True)
        schedule = TamperSchedule(every=k, weighting="final") if est_name == FO_FINAL else sched
        rows.append(dict(row, **jax_case(meta_fn(est, schedule), (params,), reps)))
    tm = TorchMeta(cfg, ids, tamper, every=EVERY)
    for method, fn in {"plain": tm.plain, "tar": tm.tar_fo, "exact": tm.exact}.items():
        ref = next((r for r in rows if r["method"] == method), None)
        if ref is None:  # estimator not selected with --estimators
            continue
        skipped = ref.get("skipped")
        if method == "exact" and not skipped:
            # create_graph keeps every intermediate: bounded by the planner's everything-saveable exact (1.9-2.3x
            # the PyTorch peak measured at d=256, K=4 and 16); at d=256, K=64 it predicts 39 GiB
            held = predict_peak_bytes(work, Estimator("remat", remat_policy="everything_saveable")).total
            if held > mem_limit:
                skipped = f"create_graph keeps every intermediate: may need up to {held / 2**30:.1f} GiB > limit"
        if skipped:
            rows.append(dict(base, framework="torch", method=method, skipped=skipped))
            continue
        print(f"[{name} K={k}] torch {method}", flush=True)
        n = max(3, reps // 2) if method == "exact" and k > 16 else reps
        res = torch_time(partial(fn, k), n)
        rows.append(dict(base, framework="torch", method=method, flops=ref.get("flops"), **res))
    return rows


def bench_vmap(quick: bool, reps: int, sizes: tuple[int, ...]) -> list[dict]:
    """A adversaries (AdamW, different learning rates) with the TAR estimator: one vmap vs loops."""
    model, params = create_model(OVERHEAD, seed=0)
    ce, neg_entropy = _lm_losses(model)
    k, batch, seq = (4 if quick else 16), 4, 32
    sched, key = TamperSchedule.tar(every=EVERY), jax.random.key(0)
    tamper = jax.random.randint(jax.random.key(2), (batch, seq), 0, OVERHEAD.vocab_size)
    one_adv = Adversary("adamw", lr=1e-3, weight_decay=0.01, steps=k)
    prob = model_attack_problem(one_adv, ce, neg_entropy, model=model)
    single = jax.jit(
        lambda p, h, ids: (
            meta_value_and_grad(
                prob,
                p,
                ids,
                tamper,
                adversary=one_adv,
                key=key,
                schedule=sched,
                estimator=Estimator("tar"),
                hyperparams=h,
            ).grads
        )
    )

    def vmapped(group):
        return lambda p, ids: (
            vmap_meta_value_and_grad(
                prob, p, group, ids, tamper, key=key, schedule=sched, estimator=Estimator("tar")
            ).grads
        )

    def jax_loop(hps, ids):
        return [_block(single(params, h, ids[i])) for i, h in enumerate(hps)]

    def torch_loop(tms):
        return [t.tar_fo(k) for t in tms]

    rows = []
    for a in sizes:
        advs = tuple(Adversary("adamw", lr=1e-3 * (1 + i), weight_decay=0.01, steps=k) for i in range(a))
        ids = jax.random.randint(jax.random.key(3), (a, k, batch, seq), 0, OVERHEAD.vocab_size)
        print(f"[vmap A={a}]", flush=True)
        rows.append(dict(method="jax_vmap", A=a, K=k, **jax_case(vmapped(AdversaryGroup(advs)), (params, ids), reps,
                                                                 flops=False)))  # fmt: skip
        hps = [{n: jnp.float32(v) for n, v in adv.hyperparams().items()} for adv in advs]
        rows.append(dict(method="jax_loop", A=a, K=k, **time_fn(partial(jax_loop, hps, ids), reps)))
        tms = [TorchMeta(OVERHEAD, np.asarray(ids[i]), tamper, lr=1e-3 * (1 + i), every=EVERY) for i in range(a)]
        rows.append(dict(method="torch_loop", A=a, K=k, **torch_time(partial(torch_loop, tms), reps)))
    return rows


def flops_crosscheck(methods: tuple[str, ...] = ("plain", "exact", "tar")) -> list[dict]:
    """XLA cost analysis on a fully unrolled copy vs the jaxpr matmul count (1-layer model, K = 4: with one layer the
    model's layer scan has trip count 1 and XLA inlines it, so nothing hides in a loop body)."""
    cfg = dataclasses.replace(OVERHEAD, num_layers=1)
    model, params = create_model(cfg, seed=0)
    ce, neg_entropy = _lm_losses(model)
    k, key = 4, jax.random.key(0)
    ids = jax.random.randint(jax.random.key(1), (k, 4, 32), 0, cfg.vocab_size)
    tamper = jax.random.randint(jax.random.key(2), (4, 32), 0, cfg.vocab_size)
    adv = Adversary("adamw", lr=1e-3, weight_decay=0.01, steps=k)
    prob = model_attack_problem(adv, ce, neg_entropy, model=model)
    sched = TamperSchedule.tar(every=EVERY)

    def meta_grads(est, p):
        return meta_value_and_grad(
            prob, p, ids, tamper, adversary=adv, key=key, schedule=sched, estimator=est, unroll=True
        ).grads

    rows = []
    for method in methods:
        if method == "plain":
            fn = lambda p: jax.lax.scan(  # noqa: E731 - plain steps, unrolled
                lambda w, b: (jax.tree.map(lambda a, g: a - 1e-3 * g, w, jax.grad(ce)(w, b, None)), None),
                p, ids, unroll=True,
            )[0]  # fmt: skip
        else:
            fn = partial(meta_grads, Estimator(method))
        print(f"[flops check] {method}", flush=True)
        cost = jax.jit(fn).lower(params).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        rows.append(
            dict(method=method, xla_flops=float(cost.get("flops", 0.0)), jaxpr_matmul_flops=count_flops(fn, params))
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--quick", action="store_true", help="overhead-bound config, K = 4, fewer estimators")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--configs", nargs="*", help="subset of configs (default: all of the mode)")
    parser.add_argument("--ks", nargs="*", type=int, help="override the K values of every config")
    parser.add_argument("--estimators", nargs="*", help="subset of estimators (plain always runs)")
    parser.add_argument("--vmap-sizes", nargs="*", type=int, help="adversary counts A for the vmap rows")
    parser.add_argument("--stem", help="output file stem (default from the mode and --configs)")
    parser.add_argument("--skip-vmap", action="store_true")
    parser.add_argument("--skip-flops-check", action="store_true")
    no_hp = "do not restart with glibc's huge-page tunable (jaxtar.commands._hugepages; both frameworks get it)"
    parser.add_argument("--no-hugepages", action="store_true", help=no_hp)
    parser.add_argument("--out-dir", type=Path, default=OUT, help=f"where results go (default {OUT})")
    parser.add_argument("--mem-limit-gib", type=float, default=0.5 * os.sysconf("SC_PHYS_PAGES") *
                        os.sysconf("SC_PAGE_SIZE") / 2**30)  # fmt: skip
    args = parser.parse_args()  # --no-hugepages is read before the imports, where the restart happens
    only = tuple(args.estimators) if args.estimators else None
    unknown = sorted(set(only or ()) - set(estimators(64, quick=False)))
    if unknown:
        parser.error(f"unknown --estimators {unknown}; known: {sorted(estimators(64, quick=False))}")
    t0 = time.time()
    torch.set_num_threads(usable_cores())
    meta = dict(
        device=str(jax.devices()[0]),
        device_kind=jax.devices()[0].device_kind,
        cpu=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        cores_used=usable_cores(),
        load_avg_start=os.getloadavg(),
        jax=jax.__version__,
        torch=torch.__version__,
        torch_threads="best of 1 and all cores (per row)",
        quick=args.quick,
        every=EVERY,
        hugepages=hugepages.status(),
    )
    meta["matmul"] = matmul_rate()
    meta["argv"] = sys.argv[1:]
    stem = args.stem or (
        "bench_meta_quick" if args.quick else "bench_meta" + ("_" + "_".join(args.configs) if args.configs else "")
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows, vmap_rows = [], []

    def save() -> None:  # after every piece, so a long run killed half-way keeps what it measured
        meta["load_avg_end"] = os.getloadavg()
        meta["total_s"] = time.time() - t0
        write_report(args.out_dir / stem, meta, rows, vmap_rows)

    for name, spec in configs(args.quick).items():
        if args.configs and name not in args.configs:
            continue
        for k in args.ks or spec["ks"]:
            rows += bench_one(name, spec, k, args.quick, args.reps, int(args.mem_limit_gib * 2**30), only)
            save()
    if not args.skip_vmap:
        for a in args.vmap_sizes or ((1, 4) if args.quick else (1, 4, 16)):
            vmap_rows += bench_vmap(args.quick, args.reps, (a,))
            save()
    meta["flops_check"] = [] if args.skip_flops_check or args.quick else flops_crosscheck()
    save()
    print(f"wrote {args.out_dir / stem}.{{json,md,png}} in {meta['total_s']:.0f} s")


if __name__ == "__main__":
    main()
