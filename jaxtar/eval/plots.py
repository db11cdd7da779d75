"""Red-team plots: the attack loss curves (one panel per adversary, every model in it, one shared legend, the
retain->forget switch marked), the summary bar chart of forget and retain accuracy (before, mean after, worst) and,
for red teams scored during the attacks (``eval_every``), the recovery curves with a bar chart of steps to recover.

Example:
    >>> moving_average_window(40), moving_average_window(200)
    (1, 8)
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxtar.eval.durability import describe_steps
from jaxtar.eval.results import AttackRun, RedTeamResults  # noqa: F401 - AttackRun: the doctests


def switch_steps(results: RedTeamResults, adversary: str) -> list[int]:
    """The retain->forget switch steps of an adversary's runs (0-based index of the first step that trains on the
    second source, e.g. forget data), sorted; [] for an adversary whose data does not switch.

    Example:
        >>> run = AttackRun("tar", "r2f", 0, {"data": "retain_to_forget"}, None, None, (1.0,) * 40, switch_step=20)
        >>> switch_steps(RedTeamResults({}, (run,), 0.25), "r2f")
        [20]
    """
    steps = set()
    for r in results.runs:
        if r.adversary != adversary or "_to_" not in str(r.spec.get("data", "")):
            continue
        step = r.switch_step if r.switch_step is not None else r.spec.get("switch_step")
        if step is not None:
            steps.add(int(step))
    return sorted(steps)


def moving_average_window(steps: int) -> int:
    """Steps averaged by the attack-loss plot's solid line: 1 (raw loss only) up to 49 steps, steps // 25 beyond.

    Example:
        >>> moving_average_window(40), moving_average_window(160)
        (1, 6)
    """
    return max(1, steps // 25)


def _adversary_caption(spec: dict[str, Any]) -> str:
    """``adamw lr 0.001, 40 steps, forget`` (+ LoRA, schedule) for a panel title."""
    parts = [f"{spec['optimizer']} lr {spec['lr']:g}"] if "optimizer" in spec and "lr" in spec else []
    if spec.get("lora"):
        parts.append(f"LoRA r{spec['lora'].get('rank', '?')}")
    schedule = (spec.get("schedule") or {}).get("kind", "constant")
    if schedule != "constant":
        parts.append(str(schedule))
    parts.append(f"{spec.get('steps', '?')} steps")
    parts.append(str(spec.get("data", "forget")).replace("_to_", "->"))
    return ", ".join(parts)


def attack_loss_figure(results: RedTeamResults) -> Any:
    """The attack-loss plot as a matplotlib Figure: one panel per adversary (title: its name, optimiser, steps and
    data), one colour per model (seed mean; band = seed min..max); for long attacks the per-step loss is drawn faint
    and its moving average solid; retain->forget switch points are dotted vertical lines. One legend for all panels
    (models, line styles and marks) below them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    advs = results.adversaries
    colors = {m: f"C{i % 10}" for i, m in enumerate(results.models)}
    cols = min(3, max(len(advs), 1))
    rows = max(1, math.ceil(len(advs) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.4 * rows + 1.2), squeeze=False)
    windows, bands, switched, drawn = set(), False, False, []
    for ax, adv in zip(axes.flat, advs):
        for model in results.models:
            runs = [r for r in results.runs_of(model, adv) if not r.diverged]
            if not runs:
                continue
            drawn.append(model)
            curves = np.asarray([r.losses for r in runs], np.float64)
            steps = np.arange(1, curves.shape[1] + 1)
            mean = np.mean(curves, 0)
            window = moving_average_window(len(steps))  # long attacks are noisy: raw mean faint, moving average solid
            ax.plot(steps, mean, color=colors[model], lw=0.8 if window > 1 else 1.4, alpha=0.35 if window > 1 else 1.0)
            if window > 1:
                windows.add(window)
                smooth = np.convolve(mean, np.ones(window) / window, mode="valid")
                ax.plot(steps[window - 1 :], smooth, color=colors[model], lw=1.5)
            if len(runs) > 1:
                bands = True
                ax.fill_between(steps, curves.min(0), curves.max(0), color=colors[model], alpha=0.15, lw=0)
        for step in switch_steps(results, adv):  # between the last retain step and the first forget step
            switched = True
            ax.axvline(step + 0.5, color="k", ls=":", lw=1.2)
            ax.annotate("retain->forget", (step + 0.5, 1), xycoords=("data", "axes fraction"), xytext=(3, -10),
                        textcoords="offset points", fontsize=7)  # fmt: skip
        spec = next((r.spec for r in results.runs if r.adversary == adv), {})
        ax.set_title(f"{adv}\n{_adversary_caption(spec)}", fontsize=9)
        ax.set_xlabel("attack step")
        ax.set_ylabel("attack loss (CE)")
        ax.grid(alpha=0.3)
    spare = list(axes.flat)[len(advs) :]
    for ax in spare:
        ax.axis("off")
    handles = [Line2D([], [], color=colors[m], lw=2, label=m) for m in results.models if m in drawn]
    if windows:
        w = "/".join(map(str, sorted(windows)))
        handles += [
            Line2D([], [], color="grey", lw=0.8, alpha=0.35, label="per-step loss (faint where averaged)"),
            Line2D([], [], color="grey", lw=1.5, label=f"moving average over {w} steps (attacks of 50+ steps)"),
        ]
    if bands:
        handles.append(Patch(color="grey", alpha=0.15, label="seed min..max"))
    if switched:
        handles.append(Line2D([], [], color="k", ls=":", lw=1.2, label="retain->forget switch (first forget step)"))
    fig.suptitle("Attack loss per adversary: cross-entropy on the attacker's training batch (seed mean)", fontsize=10)
    if not handles:  # every run diverged: nothing drawn
        fig.tight_layout()
    elif spare:  # one legend for every panel, in the first empty panel
        fig.tight_layout()
        spare[0].legend(handles=handles, loc="center", fontsize=8, title="legend (all panels)", title_fontsize=8)
    else:  # below the panels
        ncol = min(len(handles), 4)
        fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, (0.1 + 0.2 * math.ceil(len(handles) / ncol)) / (3.4 * rows + 1.2), 1, 1))
    return fig


def plot_attack_losses(results: RedTeamResults, path: str | os.PathLike) -> Path:
    """Writes `attack_loss_figure` to ``path`` (PNG)."""
    return _save(attack_loss_figure(results), path)


ACCURACY_BARS = ("before attack", "after, mean over adversaries", "after, worst case")


def accuracy_figure(results: RedTeamResults) -> Any:
    """The summary bar chart as a matplotlib Figure: per model, forget accuracy (left panel: before, mean after,
    worst case after = the highest) beside retain accuracy (right panel: before, mean after, worst case after = the
    lowest), chance as a dashed line, one legend for both panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in results.models if results.runs_of(m)]
    sums = [results.summary(m) for m in models]
    panels = {
        "forget (hazardous) domain: lower = safer": [
            [s.before.forget_acc for s in sums], [s.mean_forget_after for s in sums],
            [s.worst_forget_after for s in sums],
        ],
        "retain (benign) domain: higher = more useful": [
            [s.before.retain_acc for s in sums], [s.mean_retain_after for s in sums],
            [s.min_retain_after for s in sums],
        ],
    }  # fmt: skip
    x = np.arange(len(models))
    width = 0.8 / len(ACCURACY_BARS)
    fig, axes = plt.subplots(1, 2, figsize=(2 * max(4.5, 1.8 * len(models) + 2), 4.6), sharey=True)
    for ax, (title, values) in zip(axes, panels.items()):
        for i, (label, vals) in enumerate(zip(ACCURACY_BARS, values)):
            pos = x + (i - (len(ACCURACY_BARS) - 1) / 2) * width
            bar = ax.bar(pos, 100 * np.asarray(vals, np.float64), width, label=label, color=f"C{i}")
            ax.bar_label(bar, labels=[f"{100 * v:.0f}" if math.isfinite(v) else "n/a" for v in vals], fontsize=7)
        if not math.isnan(results.chance):
            ax.axhline(100 * results.chance, color="k", ls="--", lw=1, label="chance")
        ax.set_xticks(x, models)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("multiple-choice accuracy (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    labels = [
        "after, worst case (forget: highest; retain: lowest)" if label == ACCURACY_BARS[2] else label
        for label in labels
    ]
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle("Multiple-choice accuracy before and after the red team's fine-tuning attacks", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def plot_forget_accuracy(results: RedTeamResults, path: str | os.PathLike) -> Path:
    """Writes `accuracy_figure` (forget and retain accuracy before / after) to ``path`` (PNG)."""
    return _save(accuracy_figure(results), path)


def recovery_figure(results: RedTeamResults) -> Any:
    """The recovery plot as a matplotlib Figure: forget accuracy vs attack step, one panel per adversary with curves,
    one colour per model (seed mean, band = seed min..max), chance (dashed), the reference model's pre-attack level
    (dotted) and the recovery threshold (dash-dot) marked; below, a bar chart of steps to recover per adversary and
    model (hatched, at the attack's length, where it did not recover within it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    models = [m for m in results.models if results.recovery(m)]
    stats = {m: results.recovery(m) for m in models}
    advs = [a for a in results.adversaries if any(a in stats[m] for m in models)]
    colors = {m: f"C{i % 10}" for i, m in enumerate(results.models)}
    reference, threshold = results.recovery_reference()
    cols = min(3, max(len(advs), 1))
    rows = max(1, math.ceil(len(advs) / cols))
    fig = plt.figure(figsize=(max(4.8 * cols, 10.0), 3.2 * rows + 3.6))  # wide enough for the titles and legend
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[3.2] * rows + [2.8])
    for i, adv in enumerate(advs):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        for m in models:
            if adv in stats[m]:
                s = stats[m][adv]
                ax.plot(s["steps"], 100 * np.asarray(s["forget_acc"]), color=colors[m], marker="o", ms=3, lw=1.5)
                ax.fill_between(s["steps"], 100 * np.asarray(s["forget_min"]), 100 * np.asarray(s["forget_max"]),
                                color=colors[m], alpha=0.15, lw=0)  # fmt: skip
        if not math.isnan(results.chance):
            ax.axhline(100 * results.chance, color="k", ls="--", lw=1)
        if math.isfinite(threshold):
            ax.axhline(100 * (threshold + results.recover_margin), color="grey", ls=":", lw=1.2)
            ax.axhline(100 * threshold, color="grey", ls="-.", lw=1)
        ax.set_title(adv, fontsize=9)
        ax.set_xlabel("attack step")
        ax.set_ylabel("forget accuracy (%)")
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
    bars = fig.add_subplot(grid[rows, :])
    x, width = np.arange(len(advs)), 0.8 / max(len(models), 1)
    for j, m in enumerate(models):
        cells = [stats[m].get(a) for a in advs]
        heights = [np.nan if c is None else c["budget"] if c["steps_to_recover"] is None else c["steps_to_recover"]
                   for c in cells]  # fmt: skip
        pos = x + (j - (len(models) - 1) / 2) * width
        bar = bars.bar(pos, heights, width, color=colors[m], label=m)
        for patch, c in zip(bar, cells):
            if c is not None and c["steps_to_recover"] is None:
                patch.set_hatch("//")
                patch.set_alpha(0.5)
        labels = ["" if c is None else describe_steps(c["steps_to_recover"], c["budget"]).replace("not within ", ">")
                  for c in cells]  # fmt: skip
        bars.bar_label(bar, labels=labels, fontsize=7)
    budgets = [v["budget"] for m in models for v in stats[m].values()]
    bars.set_ylim(0, 1.15 * max(budgets, default=1))
    bars.set_xticks(x, advs, fontsize=8)
    bars.set_ylabel("steps to recover")
    title = f"steps until forget accuracy >= {reference}'s before - {100 * results.recover_margin:g} points"
    bars.set_title(f"{title}\n(hatched, '>N': not within the attack's N steps; lower = recovered sooner)", fontsize=9)
    bars.grid(axis="y", alpha=0.3)
    handles = [Line2D([], [], color=colors[m], lw=2, marker="o", ms=3, label=m) for m in models]
    handles += [
        Line2D([], [], color="k", ls="--", lw=1, label="chance"),
        Line2D([], [], color="grey", ls=":", lw=1.2, label=f"{reference} (reference) before the attack"),
        Line2D([], [], color="grey", ls="-.", lw=1, label="recovery threshold"),
        Patch(color="grey", alpha=0.15, label="seed min..max"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False)
    fig.suptitle("Forget accuracy during each attack (seed mean): how fast the hazardous domain comes back",
                 fontsize=10)  # fmt: skip
    fig.tight_layout(rect=(0, 0.35 * (1 + len(handles) // 4) / (3.2 * rows + 3.6), 1, 1))
    return fig


def plot_recovery(results: RedTeamResults, path: str | os.PathLike) -> Path:
    """Writes `recovery_figure` to ``path`` (PNG); the results must hold recovery curves."""
    if not results.has_curves:
        raise ValueError("these results hold no recovery curves (red team without eval_every)")
    return _save(recovery_figure(results), path)


def _save(fig: Any, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return Path(path)
