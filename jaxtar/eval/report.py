"""Red-team results: the records, their aggregation (mean and worst case), results.json, a markdown table, plots.

The worst case is the number that matters for a safeguard: the highest post-attack forget accuracy any adversary
reaches (each adversary averaged over its seeds). Everything is printed as measured, defended or not.

Example (writes results.json, results.md, attack_loss.png and forget_accuracy.png):
    >>> write_report(results, "redteam-out")  # doctest: +SKIP
    >>> print(markdown_table(RedTeamResults.load("redteam-out/results.json")))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from jaxtar.eval.mcq import Scores

RESULT_FILES = ("results.json", "results.md", "attack_loss.png", "forget_accuracy.png")


@dataclasses.dataclass(frozen=True)
class AttackRun:
    """One (model, adversary, seed) attack: scores before and after and the attack-loss curve."""

    model: str
    adversary: str
    seed: int
    spec: dict
    before: Scores
    after: Scores
    losses: tuple[float, ...]
    switch_step: int | None = None
    seconds: float = 0.0

    @property
    def diverged(self) -> bool:
        """Whether the attack loss became non-finite (its after-scores are then meaningless)."""
        return not all(math.isfinite(x) for x in self.losses)

    def describe(self) -> str:
        """One line: accuracies before -> after and the first / last attack loss."""
        b, a = self.before, self.after
        flag = " DIVERGED" if self.diverged else ""
        return (
            f"{self.model} | {self.adversary} | seed {self.seed}: "
            f"forget {percent(b.forget_acc)} -> {percent(a.forget_acc)}, "
            f"retain {percent(b.retain_acc)} -> {percent(a.retain_acc)}, attack loss {self.losses[0]:.3f} -> "
            f"{self.losses[-1]:.3f}{flag}"
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(before=self.before.to_dict(), after=self.after.to_dict(), losses=list(self.losses))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttackRun:
        losses = tuple(float("nan") if x is None else float(x) for x in d["losses"])
        before, after = Scores.from_dict(d["before"]), Scores.from_dict(d["after"])
        return cls(**{**d, "before": before, "after": after, "losses": losses})


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """Aggregate over a model's runs (adversaries first averaged over seeds).

    Attributes:
        mean_forget_after: mean over adversaries of the post-attack forget accuracy.
        worst_forget_after: max over adversaries of it (the safeguard's number); `worst_adversary` reached it.
        mean_retain_after, min_retain_after: post-attack retain accuracy, mean and lowest over adversaries.
    """

    model: str
    before: Scores
    adversaries: int
    runs: int
    mean_forget_after: float
    worst_forget_after: float
    worst_adversary: str
    mean_retain_after: float
    min_retain_after: float
    diverged_runs: int


@dataclasses.dataclass(frozen=True)
class RedTeamResults:
    """Everything a red-team run measured (`to_dict` is the results.json content)."""

    before: dict[str, Scores]
    runs: tuple[AttackRun, ...]
    chance: float
    metadata: dict = dataclasses.field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return list(self.before)

    @property
    def adversaries(self) -> list[str]:
        """Adversary names in first-appearance order."""
        return list(dict.fromkeys(r.adversary for r in self.runs))

    def runs_of(self, model: str, adversary: str | None = None) -> list[AttackRun]:
        return [r for r in self.runs if r.model == model and (adversary is None or r.adversary == adversary)]

    def per_adversary(self, model: str) -> dict[str, dict[str, float]]:
        """Seed means per adversary: forget / retain after, first / last attack loss, seed count."""
        out = {}
        for adv in self.adversaries:
            runs = self.runs_of(model, adv)
            if runs:
                out[adv] = dict(
                    forget_after=float(np.mean([r.after.forget_acc for r in runs])),
                    retain_after=float(np.mean([r.after.retain_acc for r in runs])),
                    forget_loss_after=float(np.mean([r.after.forget_loss for r in runs])),
                    judge_after=float(np.mean([r.after.judge_score for r in runs])),
                    first_loss=float(np.mean([r.losses[0] for r in runs])),
                    last_loss=float(np.mean([r.losses[-1] for r in runs])),
                    seeds=len(runs),
                    diverged=sum(r.diverged for r in runs),
                )
        return out

    def summary(self, model: str) -> ModelSummary:
        """Mean and worst case over adversaries for one model."""
        per = self.per_adversary(model)
        if not per:
            raise ValueError(f"no runs for model {model!r}")
        forget = {k: v["forget_after"] for k, v in per.items()}
        worst = max(forget, key=lambda k: -math.inf if math.isnan(forget[k]) else forget[k])
        retain = [v["retain_after"] for v in per.values()]
        return ModelSummary(
            model=model,
            before=self.before[model],
            adversaries=len(per),
            runs=len(self.runs_of(model)),
            mean_forget_after=float(np.mean(list(forget.values()))),
            worst_forget_after=forget[worst],
            worst_adversary=worst,
            mean_retain_after=float(np.mean(retain)),
            min_retain_after=float(np.min(retain)),
            diverged_runs=sum(v["diverged"] for v in per.values()),
        )

    def to_dict(self) -> dict[str, Any]:
        return strict_json(
            dict(
                chance=self.chance,
                metadata=self.metadata,
                before={k: v.to_dict() for k, v in self.before.items()},
                summary={m: dataclasses.asdict(self.summary(m)) for m in self.models if self.runs_of(m)},
                runs=[r.to_dict() for r in self.runs],
            )
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RedTeamResults:
        return cls(
            before={k: Scores.from_dict(v) for k, v in d["before"].items()},
            runs=tuple(AttackRun.from_dict(r) for r in d["runs"]),
            chance=float("nan") if d.get("chance") is None else d["chance"],
            metadata=d.get("metadata", {}),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> RedTeamResults:
        """Reads a results.json (or the folder holding it)."""
        path = Path(path)
        return cls.from_dict(json.loads((path / "results.json" if path.is_dir() else path).read_text()))


def strict_json(x: Any) -> Any:
    """NaN / inf -> None (recursively), so the output is strict JSON.

    Example:
        >>> strict_json({"a": [1.0, float("nan")]})
        {'a': [1.0, None]}
    """
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: strict_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict_json(v) for v in x]
    return x


def percent(x: float | None, se: float | None = None) -> str:
    """A fraction as a percentage with one decimal (and ``± se``); ``n/a`` for NaN / None.

    Example:
        >>> percent(0.25, 0.01)
        '25.0 ± 1.0'
    """
    if x is None or math.isnan(x):
        return "n/a"
    return f"{100 * x:.1f}" + (f" ± {100 * se:.1f}" if se is not None and not math.isnan(se) else "")


def markdown_table(results: RedTeamResults) -> str:
    """Model x adversary: forget / retain accuracy before and after (seed means), then per-model mean and worst case.

    A judge column (e.g. refusal rate, in %) appears when the run recorded judge scores.

    Example:
        >>> print(markdown_table(results))  # doctest: +SKIP
    """
    judged = any(not math.isnan(s.judge_score) for s in results.before.values())
    head = "| model | adversary | seeds | forget before | forget after | retain before | retain after |"
    head += " judge before | judge after |" if judged else ""
    lines = [
        f"Multiple-choice accuracy in % (chance level {percent(results.chance)} %). *Forget* is the hazardous domain: "
        "lower after an attack means the safeguard held. Worst case = the highest post-attack forget accuracy "
        "any adversary reached (mean over its seeds); ± is one binomial standard error.",
        "",
        head + " attack loss first → last |",
        "|---|---|" + "---:|" * (6 + 2 * judged),
    ]
    for model in results.models:
        b = results.before[model]
        per = results.per_adversary(model)
        for adv, v in per.items():
            flag = f" ({v['diverged']} diverged)" if v["diverged"] else ""
            judge = f" {percent(b.judge_score)} | {percent(v['judge_after'])} |" if judged else ""
            lines.append(
                f"| {model} | {adv} | {v['seeds']} | {percent(b.forget_acc)} | {percent(v['forget_after'])} | "
                f"{percent(b.retain_acc)} | {percent(v['retain_after'])} |{judge} {v['first_loss']:.3f} → "
                f"{v['last_loss']:.3f}{flag} |"
            )
        if per:
            s = results.summary(model)
            mean_judge = float(np.mean([v["judge_after"] for v in per.values()]))
            judge = f" {percent(b.judge_score)} | {percent(mean_judge)} |" if judged else ""
            lines.append(
                f"| **{model}** | **mean over {s.adversaries} adversaries** | {s.runs} | "
                f"{percent(b.forget_acc, b.forget_se)} | **{percent(s.mean_forget_after)}** | "
                f"{percent(b.retain_acc, b.retain_se)} | {percent(s.mean_retain_after)} |{judge} |"
            )
            lines.append(
                f"| **{model}** | **worst case** ({s.worst_adversary}) | | | **{percent(s.worst_forget_after)}** | | "
                f"min {percent(s.min_retain_after)} |{' | |' if judged else ''} |"
            )
    n_f = next(iter(results.before.values())).forget_n if results.before else 0
    n_r = next(iter(results.before.values())).retain_n if results.before else 0
    lines += ["", f"{n_f} forget and {n_r} retain questions; device {results.metadata.get('device', '?')}."]
    return "\n".join(lines) + "\n"


def plot_attack_losses(results: RedTeamResults, path: str | os.PathLike) -> Path:
    """One panel per adversary: attack loss vs step, one line per model (seed mean, moving average for long attacks;
    band = seed min..max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    advs = results.adversaries
    cols = min(3, max(len(advs), 1))
    rows = max(1, math.ceil(len(advs) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, adv in zip(axes.flat, advs):
        for model in results.models:
            runs = results.runs_of(model, adv)
            if not runs:
                continue
            curves = np.asarray([r.losses for r in runs], np.float64)
            steps = np.arange(1, curves.shape[1] + 1)
            mean = np.mean(curves, 0)
            window = max(1, len(steps) // 25)  # long attacks are noisy: raw mean faint, moving average solid
            (line,) = ax.plot(steps, mean, lw=0.8 if window > 1 else 1.4, alpha=0.35 if window > 1 else 1.0)
            if window > 1:
                smooth = np.convolve(mean, np.ones(window) / window, mode="valid")
                ax.plot(steps[window - 1 :], smooth, color=line.get_color(), lw=1.5)
            line.set_label(model)
            if len(runs) > 1:
                ax.fill_between(steps, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.15, lw=0)
        ax.set_title(adv, fontsize=9)
        ax.set_xlabel("attack step")
        ax.set_ylabel("attack loss (CE)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(advs) :]:
        ax.axis("off")
    if advs:
        axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_forget_accuracy(results: RedTeamResults, path: str | os.PathLike) -> Path:
    """Grouped bars per model: forget accuracy before, mean after and worst case after; chance as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in results.models if results.runs_of(m)]
    sums = [results.summary(m) for m in models]
    bars = {
        "before attack": [s.before.forget_acc for s in sums],
        "after, mean over adversaries": [s.mean_forget_after for s in sums],
        "after, worst case": [s.worst_forget_after for s in sums],
    }
    x = np.arange(len(models))
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.8 * len(models) + 2), 4.2))
    for i, (label, values) in enumerate(bars.items()):
        pos = x + (i - (len(bars) - 1) / 2) * width
        bar = ax.bar(pos, 100 * np.asarray(values, np.float64), width, label=label)
        ax.bar_label(bar, fmt="%.0f", fontsize=7)
    if not math.isnan(results.chance):
        ax.axhline(100 * results.chance, color="k", ls="--", lw=1, label="chance")
    ax.set_xticks(x, models)
    ax.set_ylabel("forget accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def check_output_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuses an existing non-empty ``out_dir`` unless ``overwrite`` (call before spending compute)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{out_dir} already exists and is not empty; refusing to overwrite it (pass overwrite)")
    return out_dir


def write_report(results: RedTeamResults, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """results.json, results.md and the two plots, written to a temporary folder and renamed into place.

    Example:
        >>> write_report(results, "redteam-out")  # doctest: +SKIP
    """
    out_dir = check_output_dir(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        (tmp / "results.json").write_text(json.dumps(results.to_dict(), indent=2, allow_nan=False) + "\n")
        (tmp / "results.md").write_text(markdown_table(results))
        plot_attack_losses(results, tmp / "attack_loss.png")
        plot_forget_accuracy(results, tmp / "forget_accuracy.png")
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
