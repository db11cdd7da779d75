"""``jaxtar plan``: will a TAR run fit, on which mesh, and how long will an outer step take? Nothing is run.

For a model and TAR's settings it prints the per-device memory of one outer step by component (the memory planner
`jaxtar.meta.memory`: `peak_components` of the meta-gradient plus `training_components` of the retain pass, which on
one device sum to `jaxtar.defenses._fit.tar_bytes`, the number a defence refuses a run on), the
``data x fsdp x adversary`` mesh it recommends (the most data parallelism that fits, then fsdp, then adversaries),
whether that fits, a step time from FLOPs (docs/meta-gradients.md#cost-model) at a stated share of the devices'
peak, and every estimator on its own best mesh with the one it recommends (docs/plan.md says how to read it).

Example:
    $ jaxtar plan llama3-8b-bio --devices 8xH100-80GB
    $ jaxtar plan Llama-3.2-1B --estimator exact --k 16 --batch 8 --seq 512 --devices v5p-64
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any

from jaxtar.commands._registry import subcommand

GIB = 2**30
# Named shapes: the architecture fields of each model's config.json on the Hugging Face Hub.
CATALOGUE: dict[str, dict[str, Any]] = {
    "SmolLM2-135M": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                         num_kv_heads=3, rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True),
    "Llama-3.2-1B": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
                         num_kv_heads=8, head_dim=64, rope_theta=500000.0, max_position_embeddings=131072,
                         tie_word_embeddings=True),
    "Llama-3-8B": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                       num_kv_heads=8, rope_theta=500000.0, max_position_embeddings=8192, tie_word_embeddings=False),
}  # fmt: skip
_ALIASES = {
    "smollm2": "SmolLM2-135M", "huggingfacetb/smollm2-135m": "SmolLM2-135M",
    "huggingfacetb/smollm2-135m-instruct": "SmolLM2-135M", "meta-llama/llama-3.2-1b": "Llama-3.2-1B",
    "meta-llama/llama-3.2-1b-instruct": "Llama-3.2-1B", "meta-llama/meta-llama-3-8b": "Llama-3-8B",
    "meta-llama/meta-llama-3-8b-instruct": "Llama-3-8B", **{name.lower(): name for name in CATALOGUE},
}  # fmt: skip
SECOND_ORDER = (("exact", False), ("mixed", False), ("remat", False), ("remat", True))  # cheapest FLOPs first
FIRST_ORDER = (("tar", False), ("first_order", False), ("truncated", False))


def _configure(p: argparse.ArgumentParser) -> None:
    from jaxtar.config.flags import add_plain_flags
    from jaxtar.config.plan import PlanConfig

    add_plain_flags(p, {"plan": PlanConfig}, tag="plan")


def _model_config(name: str) -> tuple[str, Any]:
    """(label, LlamaConfig-like) of a catalogue name / alias, ``toy``, or a Hugging Face folder."""
    from jaxtar.errors import InputError
    from jaxtar.models import LlamaConfig

    if name.lower() in _ALIASES:
        label = _ALIASES[name.lower()]
        return label, LlamaConfig(**CATALOGUE[label])
    folder = Path(name)
    if name == "toy":
        from jaxtar.toy.base_model import shipped_toy_model_dir

        folder = shipped_toy_model_dir(1, 0)
    if (folder / "config.json").is_file():
        from jaxtar.models.hf import read_config
        from jaxtar.models.registry import architecture_for

        return name, architecture_for(read_config(folder).get("model_type")).config_from_hf(read_config(folder))
    raise InputError(
        f"unknown model {name!r}: give a TAR preset, one of {', '.join(CATALOGUE)}, toy, smollm2, or a Hugging Face "
        "folder with config.json"
    )


def resolve(config: Any) -> dict[str, Any]:
    """The plan's inputs for a `jaxtar.config.plan.PlanConfig`: model label and config, the TarConfig its preset
    (or the defaults) and flags give, the sequence length, devices."""
    from jaxtar.config.defence import TarConfig, list_presets, load_config
    from jaxtar.config.plan import device_kind, parse_devices, parse_mesh
    from jaxtar.errors import ConfigError

    name, preset, seq = config.model, None, 256
    if name in list_presets() or name.endswith((".yaml", ".yml")):
        preset = load_config(name)
        name, seq = preset.model.path, preset.data.max_length
    label, model_config = _model_config(name)
    tar = preset.tar if preset is not None else TarConfig()
    fields = dict(inner_steps=config.k, tamper_every=config.every, adversary_batch_size=config.batch,
                  tamper_batch_size=config.tamper_batch, retain_batch_size=config.retain_batch,
                  adversaries_per_step=config.adversaries, adversary_chunk_size=config.chunk,
                  loss_chunk_size=config.loss_chunk, truncation=config.truncation)  # fmt: skip
    try:
        tar = dataclasses.replace(tar, **{k: v for k, v in fields.items() if v is not None})
    except ConfigError as err:
        raise ConfigError(f"{err} (as tar settings of jaxtar plan)") from err
    count, kind = parse_devices(config.devices)
    return dict(label=label, preset=preset and preset.preset, model=model_config, tar=tar, seq=config.seq or seq,
                count=count, kind=kind, device=device_kind(kind),
                mesh=parse_mesh(config.mesh) if config.mesh else None)  # fmt: skip


def _workloads(inputs: dict[str, Any], optimizer: str) -> tuple[Any, Any]:
    """(meta-gradient, retain pass) workloads, built as `jaxtar.defenses._fit.tar_bytes` builds them."""
    from jaxtar.defenses._fit import _llama_view
    from jaxtar.meta.memory import STATE_FACTOR, Workload

    view, tar, seq = _llama_view(inputs["model"]), inputs["tar"], inputs["seq"]
    if optimizer not in STATE_FACTOR:
        from jaxtar.errors import InputError

        raise InputError(f"--optimizer must be one of {sorted(STATE_FACTOR)}, got {optimizer!r}")
    if view is None:
        from jaxtar.errors import InputError

        raise InputError(f"jaxtar plan sizes decoder language models (Llama family, GPT-2), not {inputs['label']}")
    meta = Workload.for_llama(
        view, batch_size=tar.adversary_batch_size, seq_len=seq, steps=tar.inner_steps,
        records=tar.inner_steps // tar.tamper_every, optimizer=optimizer,
        adversaries=tar.adversaries_per_step, tamper_batch_size=tar.tamper_batch_size * (2 if tar.tamper_loss == "dpo"
        else 1), loss_chunk=tar.loss_chunk_size, lora_rank=tar.adversary_lora_rank,
    )  # fmt: skip
    retain = Workload.for_llama(view, batch_size=2 * tar.retain_batch_size, seq_len=seq, steps=1)
    return meta, retain


def estimator_of(kind: str, two_level: bool, tar: Any) -> Any:
    from jaxtar.meta import Estimator

    if kind == "truncated":
        return Estimator("truncated", truncation=tar.truncation or max(1, tar.inner_steps // 4))
    return Estimator(kind, two_level=two_level)


def per_device(meta: Any, retain: Any, estimator: Any, chunk: int, mesh: tuple[int, int, int]) -> dict[str, float]:
    """Bytes per device by component of one TAR outer step on ``mesh``."""
    from jaxtar.defenses._fit import OUTER_STATE_ARRAYS
    from jaxtar.meta.memory import peak_components, training_components

    a = peak_components(meta, estimator, chunk, mesh)
    b = training_components(retain, optimizer_arrays=OUTER_STATE_ARRAYS, extra_param_copies=1, mesh=mesh)
    return {k: a[k] + b[k] for k in a}


def _split_problem(inputs: dict[str, Any], meta: Any, mesh: tuple[int, int, int], chunk: int) -> str | None:
    from jaxtar.meta.memory import mesh_fits

    rows, tar = mesh[0] * mesh[1], inputs["tar"]
    problem = mesh_fits(meta, mesh, chunk)
    for what, n in (("tamper", tar.tamper_batch_size), ("retain", tar.retain_batch_size)):
        if problem is None and n % rows:
            problem = f"data x fsdp = {rows} does not divide the {what} batch of {n} rows"
    return problem


def best_mesh(inputs, meta, retain, estimator, budget: float) -> dict[str, Any]:
    """The mesh (and adversary chunk) to use: the most data parallelism that fits, then fsdp, then adversaries;
    when nothing fits, the smallest footprint. An explicit ``--mesh`` is only checked."""
    n, fixed = inputs["count"], inputs["mesh"]
    sizes = [fixed] if fixed else [(d, f, n // (d * f)) for d, f in itertools.product(range(1, n + 1), repeat=2)
                                   if n % (d * f) == 0]  # fmt: skip
    given = inputs["tar"].adversary_chunk_size
    chunks = [given] if given else range(meta.adversaries, 0, -1)
    options = []
    for mesh, chunk in itertools.product(sizes, chunks):
        if _split_problem(inputs, meta, mesh, chunk) is None:
            parts = per_device(meta, retain, estimator, chunk, mesh)
            options.append(dict(mesh=mesh, chunk=chunk, parts=parts, total=sum(parts.values())))
    if not options:
        from jaxtar.errors import InputError

        raise InputError(f"--mesh {'x'.join(map(str, fixed))} cannot run this plan: "
                         f"{_split_problem(inputs, meta, fixed, chunks[0])}" if fixed else
                         f"no data x fsdp x adversary mesh of {n} devices splits these batches (attack "
                         f"{meta.batch_size}, tamper {inputs['tar'].tamper_batch_size}, retain "
                         f"{inputs['tar'].retain_batch_size} rows, {meta.adversaries} adversaries): use batches that "
                         "data x fsdp divides, or more adversaries")  # fmt: skip
    fitting = [o for o in options if o["total"] <= budget]
    for o in options:
        o["fits"] = o["total"] <= budget
    if fitting:  # most data parallelism, then fsdp, then the most adversaries at once
        return max(fitting, key=lambda o: (o["mesh"][0], o["mesh"][1], o["chunk"]))
    return min(options, key=lambda o: o["total"])


def outer_step_flops(inputs: dict[str, Any], estimator: Any) -> float:
    """FLOPs of one outer step: per adversary, the cost factor of docs/meta-gradients.md#cost-model times K plain
    attack steps (3 x the forward: 2 per matmul weight per token, plus the T x T attention scores and mix), plus
    the retain pass (a plain step over both retain batches)."""
    c, tar, seq = inputs["model"], inputs["tar"], inputs["seq"]
    hd = c.head_dim or c.hidden_size // c.num_heads
    q, kv, d = c.num_heads * hd, c.num_kv_heads * hd, c.hidden_size
    weights = c.num_layers * (d * (q + 2 * kv) + q * d + 3 * d * c.intermediate_size) + d * c.vocab_size
    fwd_token = 2 * weights + 4 * c.num_layers * seq * q
    plain = 3 * fwd_token * tar.adversary_batch_size * seq
    k, s = tar.inner_steps, tar.tamper_every
    factor = {"exact": 3 + 1 / k, "mixed": 3.3, "remat": 5.0 if estimator.two_level else 4.0,
              "truncated": 1 + 2 * (estimator.truncation or 0) / k, "first_order": (k + 1) / k,
              "tar": 1 + 1 / s}[estimator.kind]  # fmt: skip
    retain = 3 * fwd_token * 2 * tar.retain_batch_size * seq
    return tar.adversaries_per_step * factor * k * plain + retain


def plan(config: Any) -> dict[str, Any]:
    """The whole plan for a `PlanConfig`: inputs, the chosen estimator's mesh and parts, every estimator's row,
    the recommendation."""
    inputs = resolve(config)
    meta, retain = _workloads(inputs, config.optimizer)
    device, n = inputs["device"], inputs["count"]
    budget = config.headroom * device.memory_bytes
    rows = {}
    for kind, two in SECOND_ORDER + FIRST_ORDER:
        est = estimator_of(kind, two, inputs["tar"])
        choice = best_mesh(inputs, meta, retain, est, budget)
        flops = outer_step_flops(inputs, est)
        seconds = flops / (n * device.peak_flops * config.utilisation)
        rows[kind + ("-2level" if two else "")] = dict(choice, estimator=est, flops=flops, seconds=seconds)
    second = next((name for name, r in rows.items() if r["fits"] and name in ("exact", "mixed", "remat",
                                                                                "remat-2level")), None)  # fmt: skip
    first = next((name for name in ("tar", "first_order") if rows[name]["fits"]), None)
    chosen = config.estimator or (inputs["preset"] and inputs["tar"].estimator) or second or first or "tar"
    return dict(
        inputs=inputs,
        budget=budget,
        rows=rows,
        chosen=chosen,
        second=second,
        first=first,
        utilisation=config.utilisation,
    )


def format_plan(p: dict[str, Any]) -> str:
    """The plan as printed."""
    i, row = p["inputs"], p["rows"][p["chosen"]]
    c, tar, dev = i["model"], i["tar"], i["device"]
    from jaxtar.meta.memory import Workload

    params = Workload.for_llama(c, batch_size=1, seq_len=1, steps=1).defended_params
    mesh = "x".join(map(str, row["mesh"]))
    lines = [
        f"model {i['label']}"
        + (f" (preset {i['preset']})" if i["preset"] else "")
        + f": {params / 1e9:.3g} B params, {c.num_layers} layers, d={c.hidden_size}, vocab {c.vocab_size}",
        f"devices {i['count']} x {i['kind']}: {dev.memory_bytes / GIB:.1f} GiB, {dev.peak_flops / 1e12:.3g} "
        f"TFLOP/s bf16 each ({dev.source})",
        f"TAR: K={tar.inner_steps} attack steps, a tamper record every {tar.tamper_every}, attack batch "
        f"{tar.adversary_batch_size} x {i['seq']} tokens, tamper {tar.tamper_batch_size}, retain "
        f"{tar.retain_batch_size}, {tar.adversaries_per_step} adversaries per step (chunk {row['chunk']})",
        "",
        f"estimator {p['chosen']}: mesh data x fsdp x adversary = {mesh}"
        + (" (given)" if i["mesh"] else " (recommended: the most data parallelism that fits, then fsdp)"),
        "per-device memory (float32 weights and activations):",
    ]
    lines += [f"  {name:<17} {value / GIB:10.2f} GiB" for name, value in row["parts"].items()]
    verdict = "fits" if row["fits"] else "does NOT fit"
    lines += [
        f"  {'total':<17} {row['total'] / GIB:10.2f} GiB of {p['budget'] / GIB:.1f} usable "
        f"({100 * p['budget'] / dev.memory_bytes:.0f} % of {dev.memory_bytes / GIB:.1f}): {verdict}",
        f"step time: {row['flops']:.3g} FLOP per outer step -> {_seconds(row['seconds'])} at "
        f"{100 * p['utilisation']:.0f} % of {i['count']} x {dev.peak_flops / 1e12:.3g} TFLOP/s",
        "",
        "| estimator | mesh | GiB/device | fits | FLOP/step | step time |",
        "|---|---|---:|---|---:|---:|",
    ]
    for name, r in p["rows"].items():
        if name == "truncated" and p["chosen"] != "truncated":
            continue
        lines.append(f"| {name} | {'x'.join(map(str, r['mesh']))} | {r['total'] / GIB:.2f} | "
                     f"{'yes' if r['fits'] else 'no'} | {r['flops']:.3g} | {_seconds(r['seconds'])} |")  # fmt: skip
    if p["second"]:
        rec = f"recommended: {p['second']} (the cheapest exact second-order estimator that fits)"
    elif p["first"]:
        rec = f"recommended: {p['first']} (no second-order estimator fits; first-order, TAR as published)"
    else:
        rec = "nothing fits: add devices (fsdp), shorten K or the batches, or use LoRA"
    return "\n".join([*lines, rec])


def _seconds(s: float) -> str:
    return "n/a" if not math.isfinite(s) else f"{s:.3g} s" if s < 120 else f"{s / 60:.3g} min"


@subcommand("plan", "per-device memory, mesh and step time of a TAR run on given devices (nothing is run)", _configure)
def run_plan(args: argparse.Namespace) -> int:
    from jaxtar.config.plan import PlanConfig
    from jaxtar.config.sections import settings_from_flags

    config = settings_from_flags(args, {"plan": PlanConfig}, "plan")["plan"]
    print(format_plan(plan(config)))
    return 0
