"""Ratios, targets and the JSON / markdown / PNG outputs of the meta-gradient benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxtar.checkpoint import write_text_atomic  # noqa: E402


def _plain(rows: list[dict], config: str, k: int, framework: str) -> dict | None:
    return _find(rows, config, k, framework, "plain")


def add_ratios(rows: list[dict]) -> None:
    for r in rows:
        if r.get("skipped"):
            continue
        base = _plain(rows, r["config"], r["K"], r["framework"])
        r["wall_x_plain"] = r["median_s"] / base["median_s"]
        r["wall_x_plain_min"] = r["min_s"] / base["min_s"]
        if r.get("flops"):
            r["gflops_per_s"] = r["flops"] / r["median_s"] / 1e9
            if base.get("flops"):
                r["flops_x_plain"] = r["flops"] / base["flops"]
        if r.get("bytes") and base.get("bytes"):
            r["bytes_x_plain"] = r["bytes"] / base["bytes"]


def _find(rows, config, k, framework, method):
    return next((r for r in rows if (r["config"], r["K"], r["framework"], r["method"]) == (config, k, framework, method)
                 and not r.get("skipped")), None)  # fmt: skip


def targets(meta: dict, rows: list[dict], vmap_rows: list[dict]) -> list[dict]:
    """Each issue target with the measured number and PASS / MISS."""
    out = []

    def add(name, value, goal, ok, where):
        out.append(dict(target=name, where=where, measured=value, goal=goal, status="PASS" if ok else "MISS"))

    s = meta["every"]
    rate = max(meta["matmul"]["jax_gflops"], meta["matmul"]["torch_gflops"])
    for config, k in sorted({(r["config"], r["K"]) for r in rows}):
        where = f"{config} K={k}"
        get = lambda fw, m, c=config, kk=k: _find(rows, c, kk, fw, m)
        if (r := get("jax", "tar")) is not None:
            add("tar wall <= 1.3(1+1/s) x plain", round(r["wall_x_plain"], 2), round(1.3 * (1 + 1 / s), 3),
                r["wall_x_plain"] <= 1.3 * (1 + 1 / s), where)  # fmt: skip
        for method in ("remat", "remat_grad"):  # per-step checkpointing, two save policies (the dots one is `exact`)
            if (r := get("jax", method)) is not None:
                add(f"{method} wall <= 4.5x plain", round(r["wall_x_plain"], 2), 4.5, r["wall_x_plain"] <= 4.5, where)
                add(f"{method} FLOPs <= 3.7x plain", round(r["flops_x_plain"], 2), 3.7, r["flops_x_plain"] <= 3.7,
                    where)  # fmt: skip
        # FO-MAML (one record after step K) costs (K + 1) / K plain steps in FLOPs: 1.15x needs K >= 7
        if (r := get("jax", "first_order_final")) is not None:
            add("first_order (final record) wall <= 1.15x plain", round(r["wall_x_plain"], 2), 1.15,
                r["wall_x_plain"] <= 1.15, where + ("" if k >= 7 else f" (FLOP floor {(k + 1) / k:.2f})"))  # fmt: skip
        jp, tp = get("jax", "plain"), get("torch", "plain")
        if config.startswith("tiny_d256") and jp and tp:
            add("compute-bound: jax plain >= 85% of matmul rate", round(jp["gflops_per_s"] / rate, 3), 0.85,
                jp["gflops_per_s"] >= 0.85 * rate, where)  # fmt: skip
            add("compute-bound: jax plain no slower than torch (speed-up)", round(tp["median_s"] / jp["median_s"], 2),
                1.0, jp["median_s"] <= tp["median_s"], where)  # fmt: skip
        jt, tt = get("jax", "tar"), get("torch", "tar")
        if config.startswith("overhead") and jt and tt:
            add("overhead-bound: tar step >= 2x faster than torch", round(tt["median_s"] / jt["median_s"], 2), 2.0,
                tt["median_s"] >= 2 * jt["median_s"], where)  # fmt: skip
        te = get("torch", "exact")
        goal = 1.5 if config.startswith("overhead") else 1.0
        for method in ("exact", "mixed"):  # both compute the exact meta-gradient
            je = get("jax", method)
            if je and te:
                speedup = te["median_s"] / je["median_s"]
                add(f"exact meta-gradient ({method}) speed-up vs torch create_graph", round(speedup, 2), goal,
                    speedup >= goal, where)  # fmt: skip
    big_a = max((r["A"] for r in vmap_rows), default=0)
    vm = next((r for r in vmap_rows if r["A"] == big_a and r["method"] == "jax_vmap"), None)
    tl = next((r for r in vmap_rows if r["A"] == big_a and r["method"] == "torch_loop"), None)
    if vm and tl:
        speedup = tl["median_s"] / vm["median_s"]
        name = f"A={big_a} vmapped: per-adversary speed-up vs torch loop (target is for A=16)"
        add(name, round(speedup, 2), 2.0, speedup >= 2.0, f"K={vm['K']}")
    return out


def _fmt(x, spec=".3g"):
    return "" if x is None else format(x, spec)


def markdown(meta: dict, rows: list[dict], vmap_rows: list[dict], tgts: list[dict]) -> str:
    mm = meta["matmul"]
    lines = [
        "# Meta-gradient benchmark",
        "",
        f"Device: {meta['device']} ({meta.get('cores_used', meta['cpu_count'])} of {meta['cpu_count']} CPU cores; "
        f"PyTorch threads: {meta['torch_threads']}); "
        f"jax {meta['jax']}, torch {meta['torch']}; load average at start {meta['load_avg_start'][0]:.1f}, "
        f"end {meta['load_avg_end'][0]:.1f}; total {meta['total_s']:.0f} s{' (--quick)' if meta['quick'] else ''}; "
        f"{meta.get('hugepages', 'huge pages: not recorded')}.",
        f"Matmul rate ({mm['n']}^2 f32): JAX {mm['jax_gflops']:.1f} GFLOP/s, PyTorch {mm['torch_gflops']:.1f} GFLOP/s.",
        f"Tamper records every s = {meta['every']} steps (TAR's weights); inner optimiser AdamW; ratios are to K plain "
        "attack steps of the same framework. FLOPs are matmul FLOPs counted on the jaxpr (torch rows reuse the JAX "
        "count of the same computation). Bytes: XLA's allocation (temp + args + outputs).",
        "",
        "| config | K | framework | method | median s | x plain | x plain (min s) | compile s | MB (XLA) | x plain mem "
        "| GFLOP | x plain FLOPs | GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['config']} | {r['K']} | {r['framework']} | {r['method']} | skipped: {r['skipped']} "
                         "| | | | | | | | |")  # fmt: skip
            continue
        mb = r.get("bytes") and r["bytes"] / 2**20
        gf = r.get("flops") and r["flops"] / 1e9
        cells = [r["config"], r["K"], r["framework"], r["method"], _fmt(r["median_s"]), _fmt(r.get("wall_x_plain")),
                 _fmt(r.get("wall_x_plain_min")),
                 _fmt(r.get("compile_s")), _fmt(mb), _fmt(r.get("bytes_x_plain")), _fmt(gf),
                 _fmt(r.get("flops_x_plain")), _fmt(r.get("gflops_per_s"))]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "## Many adversaries (TAR estimator, overhead-bound config)", "",
              "| A | K | method | median s | s per adversary | compile s |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in vmap_rows:
        lines.append(f"| {r['A']} | {r['K']} | {r['method']} | {_fmt(r['median_s'])} | "
                     f"{_fmt(r['median_s'] / r['A'])} | {_fmt(r.get('compile_s'))} |")  # fmt: skip
    if meta.get("flops_check"):
        lines += ["", "## FLOP count cross-check (1 layer, K = 4, fully unrolled)", ""]
        lines += ["| method | XLA cost analysis (all ops) | jaxpr matmul count | ratio |", "|---|---|---|---|"]
        for r in meta["flops_check"]:
            ratio = r["jaxpr_matmul_flops"] / r["xla_flops"] if r["xla_flops"] else float("nan")
            lines.append(f"| {r['method']} | {r['xla_flops']:.4g} | {r['jaxpr_matmul_flops']:.4g} | {ratio:.3f} |")
    lines += ["", "## Targets", "", "| target | where | measured | goal | status |", "|---|---|---|---|---|"]
    for t in tgts:
        lines.append(f"| {t['target']} | {t['where']} | {t['measured']} | {t['goal']} | {t['status']} |")
    return "\n".join(lines) + "\n"


def plot(path: Path, rows: list[dict]) -> None:
    configs = sorted({r["config"] for r in rows})
    if not configs:
        return
    fig, axes = plt.subplots(1, len(configs), figsize=(6 * len(configs), 4), squeeze=False)
    for ax, config in zip(axes[0], configs):
        sel = [r for r in rows if r["config"] == config and r["framework"] == "jax" and not r.get("skipped")]
        methods = [m for m in dict.fromkeys(r["method"] for r in sel) if m != "plain"]
        ks = sorted({r["K"] for r in sel})
        width = 0.8 / max(len(ks), 1)
        for i, k in enumerate(ks):
            vals = [next((r["wall_x_plain"] for r in sel if r["K"] == k and r["method"] == m), 0) for m in methods]
            ax.bar([j + i * width for j in range(len(methods))], vals, width, label=f"K={k}")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(methods))], methods, rotation=30, ha="right")
        ax.axhline(1.0, color="k", lw=0.5)
        ax.set_ylabel("wall-clock / K plain steps")
        ax.set_title(config)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(stem: Path, meta: dict, rows: list[dict], vmap_rows: list[dict]) -> None:
    add_ratios(rows)
    tgts = targets(meta, rows, vmap_rows)
    payload = dict(meta=meta, rows=rows, vmap=vmap_rows, targets=tgts)
    for suffix, text in ((".json", json.dumps(payload, indent=1, default=str)),
                         (".md", markdown(meta, rows, vmap_rows, tgts))):  # fmt: skip
        write_text_atomic(stem.with_suffix(suffix), text)
    plot(stem.with_suffix(".png"), rows)
    print(markdown(meta, rows, vmap_rows, tgts))
