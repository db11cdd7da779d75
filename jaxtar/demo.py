"""The main job (``jaxtar demo``): defend the toy-world base model with random mapping and TAR, red-team all three
with a held-out adversary suite, and print what the numbers say.

Stages (each a library call a user can also make):

1. the shipped toy base model (`jaxtar.toy.toy_base_model_path`);
2. the random-mapping safeguard (`jaxtar.defenses.run_random_mapping`, toy preset);
3. TAR from the random-mapped model (`jaxtar.defenses.run_tar`, toy preset);
4. the held-out red team `jaxtar.eval.toy_suite` against base / random mapping / TAR (`jaxtar.eval.red_team`), every
   attack also scored every 20 steps (``eval_every``): the recovery curve of the 160-step attack and its steps to
   recover (`jaxtar.eval.durability`).

Everything lands in one new folder: ``random-mapping/`` and ``tar/`` (run folders with ``model/``), ``redteam/``
(results.json, results.md, attack_loss.png, forget_accuracy.png, recovery.png), ``summary.md`` and ``demo.json``.
Only budgets differ between the full and the ``quick`` run (steps, adversaries, seeds, scoring interval); the
evaluation is the same.

Example:
    >>> result = run_demo("runs/my-demo", quick=True, progress=False)  # doctest: +SKIP
    >>> result.results.summary("tar").worst_forget_after  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jaxtar.checkpoint import write_json_atomic, write_text_atomic
from jaxtar.demo_report import (  # noqa: F401 - re-exported: the demo's report
    QUICK_WARNING,
    README_END,
    README_START,
    RETAIN_LOSS_NOTE,
    TORCH_NOTE,
    demo_numbers,
    demo_table,
    explanation,
    export_note,
    key_numbers,
    longer_attack_command,
    plots_note,
    readme_results,
    recovery_numbers,
    verdict,
    with_readme_results,
)
from jaxtar.errors import RunDirError
from jaxtar.runlock import claim_output_dir, is_new_or_empty

MODELS = ("base", "random-mapping", "tar")


@dataclasses.dataclass(frozen=True)
class DemoBudget:
    """How much compute each stage gets (the evaluation itself never changes).

    Attributes:
        overrides: dotted overrides of the ``toy`` preset for both defences (``{}`` = the preset as shipped).
        adversaries: names of `toy_suite` adversaries to run (None = all).
        attack_steps: rescale every attack to this many steps (None = the suite's own).
        seeds: seeds per adversary.
        mcq_limit: score at most this many questions per domain (None = all).
        eval_every: also score every attack every this many steps (`jaxtar.eval.red_team`'s ``eval_every``: the
            recovery curves; the full demo's 160-step attack at 0, 20, ..., 160, its 40-step ones at 0, 20, 40).
    """

    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    adversaries: tuple[str, ...] | None = None
    attack_steps: int | None = None
    seeds: tuple[int, ...] = (0,)
    mcq_limit: int | None = None
    eval_every: int | None = 20


FULL = DemoBudget()
# Plumbing check in well under a minute: every stage runs for real, on a few steps (numbers not meaningful).
QUICK = DemoBudget(
    overrides={"random_mapping.steps": 2, "random_mapping.warmup_steps": 0, "random_mapping.forget_batch_size": 4,
               "random_mapping.retain_batch_size": 4, "tar.outer_steps": 2, "tar.warmup_steps": 0,
               "tar.inner_steps": 2, "tar.tamper_every": 1, "tar.adversary_batch_size": 4,
               "tar.tamper_batch_size": 4, "tar.retain_batch_size": 4},
    adversaries=("toy-adamw-1e-3", "toy-r2f-adamw-1e-3"),
    attack_steps=4,
    mcq_limit=40,
    eval_every=2,
)  # fmt: skip
# The baselines' budget in a quick demo (the full demo runs the toy preset's `baseline` section as shipped).
QUICK_BASELINE = {"baseline.steps": 2, "baseline.warmup_steps": 0, "baseline.forget_batch_size": 4,
                  "baseline.retain_batch_size": 4}  # fmt: skip


def baseline_label(method: str) -> str:
    """A baseline's model name in the demo's tables (``max_entropy`` -> ``max-entropy``).

    Example:
        >>> baseline_label("min_posterior")
        'min-posterior'
    """
    return method.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What `run_demo` produced: the folder, the red-team results, the printed text, and timings."""

    out_dir: Path
    results: Any  # jaxtar.eval.RedTeamResults
    summary: str
    seconds: float
    stage_seconds: dict[str, float]


def default_output_dir(root: str | os.PathLike = "runs") -> Path:
    """A new ``root/demo-YYYYmmdd-HHMMSS`` (``-2``, ``-3``, ... appended if that name is taken).

    Example:
        >>> default_output_dir("runs").name.startswith("demo-")
        True
    """
    base = Path(root) / time.strftime("demo-%Y%m%d-%H%M%S")
    path, n = base, 2
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def check_demo_dir(out_dir: str | os.PathLike) -> Path:
    """Refuses an existing file or non-empty folder (before any compute); returns the path.

    Example:
        >>> check_demo_dir("runs/new-folder")
        PosixPath('runs/new-folder')
    """
    out_dir = Path(out_dir)
    if not is_new_or_empty(out_dir):
        raise RunDirError(
            f"{out_dir} already exists and is not empty; the demo never overwrites a run: give a new --output folder "
            "(or none for a fresh runs/demo-<time>)"
        )
    return out_dir


LONG_ATTACK_STEPS = 160  # the held-out suite's AdamW 1e-3 attack run 4x longer


def _suite(budget: DemoBudget) -> tuple:
    from jaxtar.eval import adapt_suite, toy_suite

    short = toy_suite()
    # One long attack next to the 40-step ones, so the printed table itself shows how durable the defence is.
    long = dataclasses.replace(short[0], steps=LONG_ATTACK_STEPS, name=f"{short[0].name}-{LONG_ATTACK_STEPS}steps")
    suite = (*short, long)
    if budget.adversaries is not None:
        unknown = set(budget.adversaries) - {a.name for a in suite}
        if unknown:
            raise ValueError(f"unknown toy adversaries {sorted(unknown)}; known: {[a.name for a in suite]}")
        suite = tuple(a for a in suite if a.name in budget.adversaries)
    return suite if budget.attack_steps is None else adapt_suite(suite, steps=budget.attack_steps)


def _finished(result: Any, stage: str) -> Any:
    """A defence run's result; a run stopped by SIGINT / SIGTERM (checkpoint saved) stops the demo."""
    if result.interrupted or result.model_dir is None:
        raise KeyboardInterrupt(f"the demo was interrupted during {stage} (partial outputs in {result.output_dir})")
    return result


def _cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _usage() -> dict[str, Any]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return dict(cpu_seconds=round(ru.ru_utime + ru.ru_stime, 1), load_average=[round(x, 2) for x in os.getloadavg()])


def run_demo(
    out_dir: str | os.PathLike | None = None,
    *,
    quick: bool = False,
    seeds: Sequence[int] | None = None,
    baselines: Sequence[str] = (),
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> DemoResult:
    """The whole demo: base -> random mapping -> TAR (-> baselines) -> red team of them all -> table, plots and
    summary.

    Args:
        out_dir: a new (or empty) folder; None = a fresh ``runs/demo-YYYYmmdd-HHMMSS``.
        quick: tiny budgets (a plumbing check: the numbers mean nothing).
        seeds: seeds per adversary (default: the budget's, one seed).
        baselines: methods of `jaxtar.config.BASELINE_METHODS` to train from the base model (the toy preset's
            ``baseline`` section) and red-team beside TAR, each in ``baseline-<method>/``.
        progress: tqdm bars of the defences and attacks.
        log: printer for stage headers and the final table.

    Raises:
        FileExistsError: ``out_dir`` exists and is not empty (nothing is touched).
        KeyboardInterrupt: a defence stage was stopped by SIGINT / SIGTERM.

    Example:
        >>> result = run_demo("runs/demo-quick", quick=True)  # doctest: +SKIP
        >>> print(result.summary)  # doctest: +SKIP
    """
    from jaxtar.config import load_config
    from jaxtar.config.baseline import BASELINE_METHODS
    from jaxtar.defenses import run_baseline, run_random_mapping, run_tar
    from jaxtar.eval import RedTeamData, red_team
    from jaxtar.toy import toy_base_model_path

    budget = QUICK if quick else FULL
    if seeds is not None:
        if not seeds:
            raise ValueError("seeds must name at least one seed")
        budget = dataclasses.replace(budget, seeds=tuple(int(s) for s in seeds))
    unknown = sorted(set(baselines) - set(BASELINE_METHODS))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; known: {list(BASELINE_METHODS)}")
    out = check_demo_dir(default_output_dir() if out_dir is None else out_dir)
    suite = _suite(budget)
    n = 5 if baselines else 4  # stages
    run = {"run.progress": progress, "run.tensorboard": False}
    rm_cfg = load_config("toy", {**budget.overrides, **run, "run.output_dir": str(out / "random-mapping")})
    t0 = time.time()
    start = _usage()
    with claim_output_dir(out, what="demo folder"):  # locked while the demo writes; refused if in use
        stages: dict[str, float] = {}
        log(f"jaxtar demo{' --quick' if quick else ''}: writing {out}")
        if quick:
            log(QUICK_WARNING)

        t = time.time()
        log(f"\n== [1/{n}] base model: the shipped toy-world Llama (knows both domains) ==")
        base_dir = toy_base_model_path(0, log=log)
        log(f"   {base_dir}")
        stages["base"] = time.time() - t

        t = time.time()
        rm = rm_cfg.random_mapping
        log(f"\n== [2/{n}] random mapping: {rm.steps} steps, batch {rm.forget_batch_size} forget + "
            f"{rm.retain_batch_size} retain ==")  # fmt: skip
        rm_result = _finished(run_random_mapping(rm_cfg), "random mapping")
        stages["random_mapping"] = time.time() - t

        t = time.time()
        tar_cfg = load_config("toy", {**budget.overrides, **run, "run.output_dir": str(out / "tar"),
                                      "model.path": str(rm_result.model_dir)})  # fmt: skip
        tc = tar_cfg.tar
        log(f"\n== [3/{n}] TAR from the random-mapped model: {tc.outer_steps} outer steps, {tc.adversaries_per_step} "
            f"adversary x {tc.inner_steps} inner steps each (AdamW, lr {', '.join(map(str, tc.adversary_lrs or ()))}; "
            f"forget SFT or retain->forget) ==")  # fmt: skip
        tar_result = _finished(run_tar(tar_cfg), "TAR")
        stages["tar"] = time.time() - t

        models = {"base": str(base_dir), "random-mapping": str(rm_result.model_dir), "tar": str(tar_result.model_dir)}
        if baselines:
            t = time.time()
            log(f"\n== [4/{n}] the paper's baselines from the base model: {', '.join(baselines)} ==")
            for method in baselines:
                folder = out / f"baseline-{baseline_label(method)}"
                overrides = {**(QUICK_BASELINE if quick else {}), **run, "baseline.method": method}
                cfg = load_config("toy", {**overrides, "run.output_dir": str(folder)})
                result = _finished(run_baseline(cfg), f"the {method} baseline")
                models[baseline_label(method)] = str(result.model_dir)
            stages["baselines"] = time.time() - t

        t = time.time()
        lengths = "/".join(str(s) for s in sorted({a.steps for a in suite}))
        scored = f", scored every {budget.eval_every}" if budget.eval_every else ""
        log(f"\n== [{n}/{n}] red team: {len(models)} models x {len(suite)} held-out adversaries x {len(budget.seeds)} "
            f"seed(s), {lengths} attack steps{scored} ==")  # fmt: skip
        data = RedTeamData.toy(0, mcq_limit=budget.mcq_limit)
        results = red_team(models, suite, data, seeds=budget.seeds, out_dir=out / "redteam", progress=progress,
                           eval_every=budget.eval_every, reference_model="base")  # fmt: skip
        stages["red_team"] = time.time() - t

        seconds = time.time() - t0
        end = _usage()
        table = demo_table(results)
        text = explanation(results, budget, quick, out)
        timing = (
            f"Wall clock {seconds / 60:.1f} min ({', '.join(f'{k} {v:.0f} s' for k, v in stages.items())}); "
            f"{os.cpu_count()} CPU(s), {platform.machine()}, load average {start['load_average'][0]} at start, "
            f"{end['load_average'][0]} at end; process CPU time {end['cpu_seconds']:.0f} s."
        )
        summary = f"{QUICK_WARNING}\n\n" if quick else ""
        summary += f"{table}\n{text}\n{timing}\n"
        write_text_atomic(
            out / "summary.md",
            f"# jaxtar demo\n\n{summary}\nPer-run details: redteam/results.md; plots: redteam/*.png.\n",
        )
        write_json_atomic(out / "demo.json", dict(
            quick=quick, seconds=round(seconds, 1), stage_seconds={k: round(v, 1) for k, v in stages.items()},
            start=start, end=end, cpu_count=os.cpu_count(), machine=platform.machine(), cpu=_cpu_name(),
            date=time.strftime("%Y-%m-%d"), models=models, overrides=budget.overrides,
            adversaries=[a.name for a in suite], seeds=list(budget.seeds), mcq_limit=budget.mcq_limit,
            eval_every=budget.eval_every, **({"baselines": list(baselines)} if baselines else {}),
            verdict=verdict(results), numbers=demo_numbers(results), recovery=recovery_numbers(results),
            results=results.to_dict(),
        ))  # fmt: skip
        log("\n" + summary)
        log(plots_note(out, results))
        log(f"Everything: {out}")
        return DemoResult(out, results, summary, seconds, stages)
