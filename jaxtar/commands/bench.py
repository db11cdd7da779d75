"""``jaxtar bench``: a quick meta-gradient throughput benchmark of this machine, using the library.

For a seeded tiny Llama and K AdamW attack steps it times K plain attack steps and the meta-gradient of TAR's
tamper objective (records every s-th step, exponential weights) under each chosen estimator: median wall-clock of
``--reps`` runs after a warm-up, compile time, and the ratio to the plain steps. The full study (PyTorch side by
side, FLOPs, memory, vmapped adversaries) is ``benchmarks/bench_meta.py``.

Example:
    $ jaxtar bench                                     # tiny model, K = 4, every estimator
    $ jaxtar bench --size small --k 16 --estimators tar first_order remat
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from typing import Any

from jaxtar.commands._registry import subcommand

SIZES = {  # LlamaConfig.tiny overrides; "tiny" is overhead-bound, "small" compute-bound on a CPU
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2),
    "small": dict(vocab_size=2048, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4, num_kv_heads=4),
}
ESTIMATOR_NAMES = ("exact", "remat", "mixed", "truncated", "first_order", "tar")


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--estimators", nargs="+", choices=ESTIMATOR_NAMES, default=list(ESTIMATOR_NAMES),
                   help="estimators to time (default: all; truncated uses T = K/4)")  # fmt: skip
    p.add_argument("--k", type=int, default=4, help="attack steps K (default 4)")
    p.add_argument("--every", type=int, default=None, help="tamper record every s steps (default min(4, K))")
    p.add_argument("--size", choices=tuple(SIZES), default="tiny",
                   help="tiny: 2 layers d=64 (overhead-bound); small: 4 layers d=256 (compute-bound)")  # fmt: skip
    p.add_argument("--layers", type=int, default=None, help="override the number of layers")
    p.add_argument("--hidden-size", type=int, default=None, help="override d (>= 8; MLP 3d; d // 64 heads)")
    p.add_argument("--batch", type=int, default=4, help="sequences per attack step")
    p.add_argument("--seq", type=int, default=32, help="tokens per sequence")
    p.add_argument("--reps", type=int, default=5, help="timed runs per row after one warm-up (median reported)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file (must not exist)")


def _model_config(args: argparse.Namespace):
    from jaxtar.models import LlamaConfig

    fields = dict(SIZES[args.size], max_position_embeddings=max(128, args.seq))
    if args.layers is not None:
        fields["num_layers"] = args.layers
    if args.hidden_size is not None:
        heads = max(1, args.hidden_size // 64)
        fields.update(hidden_size=args.hidden_size, intermediate_size=3 * args.hidden_size, num_heads=heads,
                      num_kv_heads=heads)  # fmt: skip
    return LlamaConfig.tiny(**fields)


def _check(args: argparse.Namespace) -> None:
    for name in ("k", "batch", "seq", "reps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.seq < 2:
        raise ValueError("--seq must be >= 2 (next-token loss)")
    if args.every is not None and not 1 <= args.every <= args.k:
        raise ValueError(f"--every must be in [1, K={args.k}], got {args.every}")
    if args.layers is not None and args.layers < 1:
        raise ValueError(f"--layers must be >= 1, got {args.layers}")
    if args.hidden_size is not None:
        heads = max(1, args.hidden_size // 64)
        if args.hidden_size < 8 or args.hidden_size % heads or (args.hidden_size // heads) % 2:
            raise ValueError(f"--hidden-size must be >= 8 with an even head size (d/64 heads), got {args.hidden_size}")


def _time(fn: Any, args: tuple, reps: int) -> dict[str, float]:
    import jax

    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "min_s": min(times), "compile_s": compile_s}


def run_bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The benchmark rows: ``plain`` then one per estimator, each with ``ratio`` = median / plain median."""
    import jax
    import jax.numpy as jnp

    from jaxtar.attacks import Adversary, model_attack_problem, unroll
    from jaxtar.meta import Estimator, TamperSchedule, meta_value_and_grad
    from jaxtar.models import create_model

    cfg = _model_config(args)
    model, params = create_model(cfg, seed=0)
    k, every = args.k, args.every or min(4, args.k)

    def ce(p, ids, lora):
        logp = jax.nn.log_softmax(model.apply(p, ids, lora=lora).logits[:, :-1])
        return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))

    def neg_entropy(p, ids, lora):
        logp = jax.nn.log_softmax(model.apply(p, ids, lora=lora).logits)
        return jnp.mean(jnp.sum(jnp.exp(logp) * logp, axis=-1))

    ids = jax.random.randint(jax.random.key(1), (k, args.batch, args.seq), 0, cfg.vocab_size)
    tamper = jax.random.randint(jax.random.key(2), (args.batch, args.seq), 0, cfg.vocab_size)
    adv = Adversary("adamw", lr=1e-3, weight_decay=0.01, steps=k)
    prob = model_attack_problem(adv, ce, neg_entropy, model=model)
    schedule, key = TamperSchedule.tar(every=every), jax.random.key(0)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    base = dict(K=k, every=every, layers=cfg.num_layers, hidden_size=cfg.hidden_size, params=int(n_params))

    rows = [dict(base, method="plain", **_time(lambda p: unroll(prob, p, adv, ids, key=key).trainable, (params,),
                                                  args.reps))]  # fmt: skip
    for name in args.estimators:
        est = Estimator("truncated", truncation=max(1, k // 4)) if name == "truncated" else Estimator(name)

        def meta(p, est=est):
            return meta_value_and_grad(prob, p, ids, tamper, adversary=adv, key=key, schedule=schedule,
                                       estimator=est).grads  # fmt: skip

        rows.append(dict(base, method=name, **_time(meta, (params,), args.reps)))
    plain = rows[0]["median_s"]
    for row in rows:
        row["ratio"] = row["median_s"] / plain
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the rows (method, median ms, x plain, compile s)."""
    lines = ["| method | median ms | x plain | compile s |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {1e3 * r['median_s']:.2f} | {r['ratio']:.2f} | {r['compile_s']:.1f} |")
    return "\n".join(lines)


@subcommand("bench", "time meta-gradient estimators against plain attack steps on a tiny Llama", _configure)
def run_bench_command(args: argparse.Namespace) -> int:
    import os

    import jax

    from jaxtar.checkpoint import write_text_atomic

    _check(args)
    if args.json is not None and os.path.exists(args.json):
        raise FileExistsError(f"{args.json} already exists; choose a new --json path")
    rows = run_bench(args)
    r = rows[0]
    print(f"device {jax.devices()[0]} ({os.cpu_count()} CPUs), load average {os.getloadavg()[0]:.1f}; "
          f"Llama {r['layers']} layers d={r['hidden_size']} ({r['params']:,} params), batch {args.batch} x "
          f"{args.seq} tokens, K={r['K']} AdamW steps, tamper records every {r['every']}")  # fmt: skip
    print(format_table(rows))
    if not all(math.isfinite(x["ratio"]) and x["ratio"] > 0 for x in rows):
        raise ValueError("a timing was not finite and positive")
    if args.json is not None:
        options = {k: v for k, v in vars(args).items() if k != "run"}
        write_text_atomic(args.json, json.dumps({"options": options, "rows": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0
