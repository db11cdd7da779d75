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
import dataclasses
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


def _sections() -> dict[str, type]:
    from jaxtar.config.run import ProcessesConfig
    from jaxtar.config.tools import BenchConfig

    return {"bench": BenchConfig, "run": ProcessesConfig}  # --k, ...; --run.coordinator, ...


def _sections_of(preset):
    from jaxtar.config.sections import load_preset
    from jaxtar.config.tools import BENCH_PRESETS

    label, sections = load_preset(preset, _sections(), presets=BENCH_PRESETS)
    return label or "default", sections


def _configure(p: argparse.ArgumentParser) -> None:
    from jaxtar.config.flags import add_preset_flag, add_section_flags
    from jaxtar.config.tools import BENCH_PRESETS

    add_preset_flag(p, default=None, names=BENCH_PRESETS.names(), sections_of=_sections_of, kind="bench preset")
    add_section_flags(p, _sections(), tag="bench", prefixes={"bench": ""}, title="{section}")


def bench_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``{"bench": BenchConfig, "run": ProcessesConfig}`` of ``--preset`` and the flags."""
    from jaxtar.config.sections import settings_from_flags
    from jaxtar.config.tools import BENCH_PRESETS

    return settings_from_flags(args, _sections(), "bench", args.preset, BENCH_PRESETS)


def bench_config(args: argparse.Namespace) -> Any:
    """The `jaxtar.config.tools.BenchConfig` of ``--preset`` and the flags."""
    return bench_settings(args)["bench"]


def _model_config(config: Any):
    from jaxtar.models import LlamaConfig

    fields = dict(SIZES[config.size], max_position_embeddings=max(128, config.seq))
    if config.layers is not None:
        fields["num_layers"] = config.layers
    if config.hidden_size is not None:
        heads = max(1, config.hidden_size // 64)
        fields.update(hidden_size=config.hidden_size, intermediate_size=3 * config.hidden_size, num_heads=heads,
                      num_kv_heads=heads)  # fmt: skip
    return LlamaConfig.tiny(**fields)


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


def run_bench(config: Any) -> list[dict[str, Any]]:
    """The benchmark rows for a `jaxtar.config.tools.BenchConfig`: ``plain`` then one per estimator, each with
    ``ratio`` = median / plain median."""
    import jax
    import jax.numpy as jnp

    from jaxtar.attacks import Adversary, model_attack_problem, unroll
    from jaxtar.meta import Estimator, TamperSchedule, meta_value_and_grad
    from jaxtar.models import create_model

    cfg = _model_config(config)
    model, params = create_model(cfg, seed=0)
    k, every = config.k, config.every or min(4, config.k)

    def ce(p, ids, lora):
        logp = jax.nn.log_softmax(model.apply(p, ids, lora=lora).logits[:, :-1])
        return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))

    def neg_entropy(p, ids, lora):
        logp = jax.nn.log_softmax(model.apply(p, ids, lora=lora).logits)
        return jnp.mean(jnp.sum(jnp.exp(logp) * logp, axis=-1))

    ids = jax.random.randint(jax.random.key(1), (k, config.batch, config.seq), 0, cfg.vocab_size)
    tamper = jax.random.randint(jax.random.key(2), (config.batch, config.seq), 0, cfg.vocab_size)
    adv = Adversary("adamw", lr=1e-3, weight_decay=0.01, steps=k)
    prob = model_attack_problem(adv, ce, neg_entropy, model=model)
    schedule, key = TamperSchedule.tar(every=every), jax.random.key(0)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    base = dict(K=k, every=every, layers=cfg.num_layers, hidden_size=cfg.hidden_size, params=int(n_params))

    rows = [dict(base, method="plain", **_time(lambda p: unroll(prob, p, adv, ids, key=key).trainable, (params,),
                                                  config.reps))]  # fmt: skip
    for name in config.estimators:
        est = Estimator("truncated", truncation=max(1, k // 4)) if name == "truncated" else Estimator(name)

        def meta(p, est=est):
            return meta_value_and_grad(prob, p, ids, tamper, adversary=adv, key=key, schedule=schedule,
                                       estimator=est).grads  # fmt: skip

        rows.append(dict(base, method=name, **_time(meta, (params,), config.reps)))
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
    from jaxtar.parallel import initialize_distributed, is_main_process

    settings = bench_settings(args)
    initialize_distributed(run=settings["run"])  # before any other JAX call; each process times its own devices
    config = settings["bench"]
    if config.json is not None and os.path.exists(config.json):
        raise FileExistsError(f"{config.json} already exists; choose a new --json path")
    rows = run_bench(config)
    if not is_main_process():
        return 0
    r = rows[0]
    print(f"device {jax.devices()[0]} ({os.cpu_count()} CPUs), load average {os.getloadavg()[0]:.1f}; "
          f"Llama {r['layers']} layers d={r['hidden_size']} ({r['params']:,} params), batch {config.batch} x "
          f"{config.seq} tokens, K={r['K']} AdamW steps, tamper records every {r['every']}")  # fmt: skip
    print(format_table(rows))
    if not all(math.isfinite(x["ratio"]) and x["ratio"] > 0 for x in rows):
        raise ValueError("a timing was not finite and positive")
    if config.json is not None:
        options = dataclasses.asdict(config)
        write_text_atomic(config.json, json.dumps({"options": options, "rows": rows}, indent=2))
        print(f"wrote {config.json}")
    return 0
