"""A sweep's aggregate: one row per variant (mean ± spread over seeds of each measure) in ``results.md`` and
``results.json``, and the plots ``recovery.png`` (worst-case forget accuracy vs attack step per variant) and
``steps_to_recover.png``.

Spread is the sample standard deviation over seeds (none for one seed). A steps-to-recover that is not within the
attack's budget counts as the budget, a lower bound: a mean over such seeds is shown as ``>= N``.

Example:
    >>> rows = [{"variant": "a", "seed": 0, "worst_steps_to_recover": 40, "attack_budget": 500},
    ...         {"variant": "a", "seed": 1, "worst_steps_to_recover": None, "attack_budget": 500}]
    >>> steps_text(variant_stats(rows, ("worst_steps_to_recover",))["worst_steps_to_recover"])
    '>= 270 ± 325'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxtar.config.sweep import BASE
from jaxtar.files import write_json_atomic, write_text_atomic

STEPS = "worst_steps_to_recover"
LABELS = {
    STEPS: "steps to recover (worst)",
    "retain_cost": "retain cost (pts)",
    "forget_before": "forget before (%)",
    "retain_before": "retain before (%)",
    "worst_forget_auc": "forget AUC (%, worst)",
    "train_seconds": "train s",
    "redteam_seconds": "red team s",
}


def column_label(column: str) -> str:
    """A results column's heading.

    Example:
        >>> column_label("worst_forget_after_500")
        'forget after 500 steps (%, worst)'
    """
    if column.startswith("worst_forget_after_"):
        return f"forget after {column.rsplit('_', 1)[-1]} steps (%, worst)"
    return LABELS.get(column, column)


def variant_stats(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Mean, spread (sample std), min, max and count over a variant's seed rows, per column (values that are null
    are left out, except steps to recover: there null = not within the budget, counted as the budget and in
    ``censored``)."""
    out = {}
    for column in columns:
        values, censored = [], 0
        for row in rows:
            value = row.get(column)
            if value is None and column == STEPS and row.get("attack_budget") is not None:
                value, censored = row["attack_budget"], censored + 1
            if value is not None:
                values.append(float(value))
        x = np.asarray(values, np.float64)
        out[column] = dict(mean=float(x.mean()) if len(x) else None, std=float(x.std(ddof=1)) if len(x) > 1 else None,
                           min=float(x.min()) if len(x) else None, max=float(x.max()) if len(x) else None, n=len(x),
                           censored=censored)  # fmt: skip
    return out


def _number(stat: Mapping[str, Any], digits: int = 1) -> str:
    if stat["mean"] is None:
        return "n/a"
    spread = f" ± {stat['std']:.{digits}f}" if stat["std"] is not None else ""
    return f"{stat['mean']:.{digits}f}{spread}"


def steps_text(stat: Mapping[str, Any]) -> str:
    """Steps to recover as a table shows them: ``120 ± 20``, ``>= 300 ± 200`` (some seeds not within the budget),
    ``not within 500`` (none recovered)."""
    if stat["mean"] is None:
        return "n/a"
    if stat["censored"] == stat["n"]:
        return f"not within {stat['max']:.0f}"
    return (">= " if stat["censored"] else "") + _number(stat, 0)


def _order(by_variant: Mapping[str, list[dict]], last_length: str | None) -> list[str]:
    """Variants by worst-case steps to recover, most durable first (ties: the lower worst forget accuracy)."""

    def key(name: str) -> tuple[float, float]:
        stats = variant_stats(by_variant[name], [STEPS, *([last_length] if last_length else [])])
        steps = stats[STEPS]["mean"]
        forget = stats[last_length]["mean"] if last_length else None
        return (-(steps if steps is not None else -1.0), forget if forget is not None else math.inf)

    return sorted(by_variant, key=key)


def _group(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["variant"], []).append(dict(row))
    return groups


def _overrides_text(overrides: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "-"


def write_aggregate(plan: Any, rows: Sequence[Mapping[str, Any]]) -> str:
    """Writes results.md and results.json of the rows so far; returns the markdown."""
    from jaxtar.files import strict_json

    config, out = plan.config, plan.out_dir
    groups = _group(rows)
    longest = f"worst_forget_after_{plan.attack_lengths[-1]}" if plan.attack_lengths else None
    order = _order(groups, longest)
    columns = [STEPS, *(f"worst_forget_after_{n}" for n in plan.attack_lengths), "worst_forget_auc", "retain_cost",
               "forget_before", "retain_before", "train_seconds", "redteam_seconds"]  # fmt: skip
    stats = {name: variant_stats(groups[name], columns) for name in order}
    spec = config.redteam
    lines = [f"# Sweep {config.name}", ""]
    if config.description:
        lines += [config.description, ""]
    lines += [
        f"Defence {config.defence} (preset {config.preset}{', from ' + config.start_from if config.start_from else ''}"
        f"), seeds {list(config.seeds)}; red team {'+'.join(spec.suite)} ({'/'.join(map(str, plan.attack_lengths))}"
        f"-step attacks, scored every {spec.eval_every} steps) on {spec.data} data. Mean ± standard deviation over "
        "seeds; variants sorted by steps to recover, most durable first.",
        "",
        "| variant | seeds | " + " | ".join(column_label(c) for c in columns) + " | overrides |",
        "|---|---:|" + "---:|" * len(columns) + "---|",
    ]
    for name in order:
        cells = [steps_text(stats[name][STEPS]), *(_number(stats[name][c]) for c in columns[1:])]
        overrides = _overrides_text(groups[name][0].get("overrides") or {})
        lines.append(f"| {name} | {len(groups[name])} | " + " | ".join(cells) + f" | {overrides} |")
    lines += ["", NOTES.format(margin=100 * spec.recover_margin), ""]
    table = "\n".join(lines)
    write_text_atomic(out / "results.md", table)
    payload = dict(
        name=config.name,
        description=config.description,
        columns={c: column_label(c) for c in columns},
        variants=[
            dict(
                variant=n,
                overrides=groups[n][0].get("overrides") or {},
                seeds=[r["seed"] for r in groups[n]],
                stats=stats[n],
            )
            for n in order
        ],  # fmt: skip
        rows=list(rows),
    )
    write_json_atomic(out / "results.json", strict_json(payload))
    return table


NOTES = (
    "Steps to recover: the fewest attack steps any adversary needed (seed-mean curve of each job's red team) until "
    "forget accuracy reached the base model's pre-attack forget accuracy minus {margin:g} points; 'not within N' = "
    "no adversary got there within its N steps, a lower bound (higher = more durable). Forget after N steps: the "
    "highest post-attack forget accuracy over the N-step attacks (lower = better). Forget AUC: the highest mean forget "
    "accuracy over an attack. Retain cost: the base model's retain accuracy minus the variant's, before any attack "
    "(points; lower = better). Train s: the defence's wall clock (0 for the base model; the start run's own row "
    "carries its time). Per job: runs/<variant>/seed-<s>/redteam/results.md."
)


def describe_row(row: Mapping[str, Any]) -> str:
    """One line per finished job.

    Example:
        >>> line = describe_row({"variant": "exact", "seed": 0, "worst_steps_to_recover": None, "attack_budget": 500,
        ...                      "worst_forget_after_500": 41.25, "retain_cost": 1.5, "train_seconds": 60.0,
        ...                      "redteam_seconds": 80.0})
        >>> line.split(", ")[:2]
        ['exact seed 0: steps to recover not within 500', 'forget after 500 steps 41.2 %']
    """
    steps = row.get(STEPS)
    parts = ["steps to recover " + (f"not within {row.get('attack_budget')}" if steps is None else str(steps))]
    for key, value in row.items():
        if key.startswith("worst_forget_after_") and value is not None:
            parts.append(f"forget after {key.rsplit('_', 1)[-1]} steps {value:.1f} %")
    if row.get("retain_cost") is not None:
        parts.append(f"retain cost {row['retain_cost']:.1f} pts")
    parts.append(f"train {row.get('train_seconds', 0):.0f} s, red team {row.get('redteam_seconds', 0):.0f} s")
    return f"{row['variant']} seed {row['seed']}: " + ", ".join(parts)


# ------------------------------------------------------------------------------------------------ plots
def worst_curves(plan: Any, rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant: the worst-case forget-accuracy curve over the longest attacks (at each evaluated step the highest
    seed curve of any adversary of that length), its mean and min..max over seeds, and the recovery threshold."""
    from jaxtar.eval.results import RedTeamResults

    out: dict[str, dict[str, Any]] = {}
    length = plan.attack_lengths[-1]
    for name, group in _group(rows).items():
        curves, thresholds, steps = [], [], None
        for row in group:
            results = RedTeamResults.load(plan.out_dir / "runs" / name / f"seed-{row['seed']}" / "redteam")
            stats = [s for s in results.recovery(name).values() if s["budget"] == length]
            if not stats:
                continue
            steps = stats[0]["steps"]
            curves.append(np.max([s["forget_acc"] for s in stats], axis=0))
            thresholds.append(results.recovery_reference()[1])
            chance = results.chance
        if curves:
            x = 100 * np.asarray(curves)
            out[name] = dict(steps=steps, mean=x.mean(0), low=x.min(0), high=x.max(0),
                             threshold=100 * float(np.mean(thresholds)), chance=100 * chance)  # fmt: skip
    return out


def write_plots(plan: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """Writes recovery.png and steps_to_recover.png (each atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _group(rows)
    if not groups:
        return
    longest = f"worst_forget_after_{plan.attack_lengths[-1]}"
    order = _order(groups, longest)
    colors = {n: plt.get_cmap("tab20")(i % 20) for i, n in enumerate(order)}
    curves = worst_curves(plan, rows)
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for name in order:
        if name in curves:
            c = curves[name]
            style = dict(color="k", lw=2.2) if name == BASE else dict(color=colors[name], lw=1.5)
            ax.plot(c["steps"], c["mean"], marker="o", ms=2.5, label=name, **style)
            ax.fill_between(c["steps"], c["low"], c["high"], color=style["color"], alpha=0.12, lw=0)
    if curves:
        any_curve = next(iter(curves.values()))
        ax.axhline(any_curve["threshold"], color="grey", ls="-.", lw=1, label="recovery threshold")
        ax.axhline(any_curve["chance"], color="grey", ls="--", lw=1, label="chance")
    ax.set(xlabel="attack step", ylabel="forget accuracy (%), worst adversary", ylim=(0, 105),
           title=f"{plan.config.name}: worst-case forget accuracy during the {plan.attack_lengths[-1]}-step attacks "
           "(seed mean, band = seed min..max)")  # fmt: skip
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    _save(fig, plan.out_dir / "recovery.png")

    fig, ax = plt.subplots(figsize=(10, 0.45 * len(order) + 1.8))
    for i, name in enumerate(order):
        stat = variant_stats(groups[name], [STEPS])[STEPS]
        if stat["mean"] is None:
            continue
        err = [[stat["mean"] - stat["min"]], [stat["max"] - stat["mean"]]]
        bar = ax.barh(i, stat["mean"], xerr=err, color=colors[name], capsize=3,
                      hatch="//" if stat["censored"] else None, alpha=0.6 if stat["censored"] else 1.0)  # fmt: skip
        ax.bar_label(bar, labels=[steps_text(stat)], fontsize=8, padding=4)
    budgets = [r["attack_budget"] for r in rows if r.get("attack_budget")]
    ax.set_xlim(0, 1.2 * max(budgets, default=1))
    ax.set_yticks(range(len(order)), order, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="attack steps until the worst adversary recovers (mean over seeds, bars = min..max)")
    ax.set_title("steps to recover (hatched, '>=' / 'not within': a lower bound; higher = more durable)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, plan.out_dir / "steps_to_recover.png")


def _save(fig: Any, path: Any) -> None:
    import os
    import uuid

    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
