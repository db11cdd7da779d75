"""One job of a sweep, variant x seed: train the defence (resuming a killed run), red-team the model, and turn the
red team's numbers into the job's results row.

The red team attacks only the job's own model; the base model of the same seed was attacked by its own job (with the
same adversaries and seed), and its results are merged in as the reference model, so steps to recover are measured
against the base model's pre-attack forget accuracy exactly as ``jaxtar redteam base=... variant=...`` would
(`jaxtar.eval.RedTeamResults.summary`), without attacking the base model once per variant. Each job's
``redteam/`` folder holds the merged results.json and results.md.

Example:
    >>> from jaxtar.config.sweep import load_sweep
    >>> from jaxtar.sweep.grid import plan_sweep
    >>> job = plan_sweep(load_sweep("toy-smoke"), "runs/smoke").jobs[2]
    >>> row = run_job(job)  # doctest: +SKIP
    >>> row["variant"], row["worst_steps_to_recover"]  # doctest: +SKIP
    ('published', 4)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from jaxtar.config.sweep import BASE, SweepRedTeam
from jaxtar.errors import RunDirError
from jaxtar.eval.results import RedTeamResults
from jaxtar.files import strict_json
from jaxtar.sweep.grid import Job

REDTEAM_FILES = ("results.json", "results.md")
TRAIN_RECORD = "train.json"  # the job's training time, written once its defence is complete
_STALE = re.compile(r"^\..+\.tmp-[0-9a-f]{8}(\.\w+)?$")  # a write the results writer left half done (a kill)


def run_job(job: Job, progress: bool = False) -> dict[str, Any]:
    """Trains (or resumes, or finds complete) the job's defence, red-teams its model and returns its results row.

    Raises:
        KeyboardInterrupt: the defence was stopped by SIGINT / SIGTERM (its checkpoint is kept: ``--resume``).
        JaxtarError: bad input, a folder in use, a diverged defence (`jaxtar.errors.DivergedError`).
    """
    job.folder.mkdir(parents=True, exist_ok=True)
    model, train_seconds = _train(job, progress)
    results, redteam_seconds = _red_team(job, model, progress)
    return results_row(job, results, train_seconds, redteam_seconds)


def _train(job: Job, progress: bool) -> tuple[str, float]:
    """The job's model (the base model itself, or the defence's export) and the seconds its training took."""
    from jaxtar.toy.named_models import resolve_model

    if job.method is None:
        return str(resolve_model(job.model)), 0.0
    from jaxtar.defenses import METHODS

    record = job.folder / TRAIN_RECORD
    start = time.time()
    result = METHODS[job.method](job.config(progress))
    if result.interrupted or result.model_dir is None:
        raise KeyboardInterrupt(f"{job.key}: the defence was interrupted; its checkpoint is in {result.output_dir} "
                                "(--resume continues it)")  # fmt: skip
    if not record.is_file():
        _write_json(record, {"train_seconds": round(time.time() - start, 1), "steps": result.steps})
    return str(result.model_dir), float(json.loads(record.read_text())["train_seconds"])


def _write_json(path: Path, obj: Any) -> None:
    from jaxtar.files import write_json_atomic

    write_json_atomic(path, obj)


@functools.lru_cache(maxsize=4)
def _data(spec: SweepRedTeam) -> Any:
    """The red team's data (questions, attack texts), read once per process."""
    from jaxtar.eval.redteam_inputs import RedTeamData

    config = spec.data_config()
    if config.data == "toy":
        return RedTeamData.toy(config.data_seed, mcq_limit=config.mcq_limit)
    return RedTeamData.from_sources(config.data, local_paths=config.local_paths(), mcq_limit=config.mcq_limit,
                                    shots=config.shots)  # fmt: skip


def clear_unfinished(folder: Path) -> None:
    """Removes what a killed writer of a results folder left half written (temporary files of the results writer);
    the files the folder's manifest lists are replaced by the next report, everything else is left alone."""
    if folder.is_dir():
        for entry in folder.iterdir():
            if _STALE.match(entry.name) and entry.is_file() and not entry.is_symlink():
                entry.unlink()


def _red_team(job: Job, model: str, progress: bool) -> tuple[RedTeamResults, float]:
    """Red-teams ``model`` into ``folder/redteam`` (a red team a kill left unfinished is run again: only the files it
    wrote are replaced) and returns the results with the base model's merged in, and the seconds it took."""
    from jaxtar.eval.redteam import red_team
    from jaxtar.eval.report import markdown_table
    from jaxtar.eval.results_dir import open_results_dir, write_results
    from jaxtar.sweep.grid import build_suite

    spec, out = job.redteam, job.folder / "redteam"
    base = None
    if job.kind != "base":
        try:
            base = RedTeamResults.load(job.base_folder / "redteam")
        except (OSError, ValueError, KeyError) as err:
            raise RunDirError(f"{job.key}: the base model's red team of seed {job.seed} is missing or unreadable "
                              f"({err}); it must be complete first") from None  # fmt: skip
    clear_unfinished(out)
    with open_results_dir(out, overwrite=True, writes=REDTEAM_FILES):
        start = time.time()
        own = red_team({job.variant: model}, build_suite(spec), _data(spec), seeds=(job.seed,), out_dir=None,
                       chunk_steps=spec.chunk_steps, eval_batch_size=spec.eval_batch_size, progress=progress,
                       max_retain_drop=spec.max_retain_drop, eval_every=spec.eval_every,
                       recover_margin=spec.recover_margin)  # fmt: skip
        seconds = time.time() - start
        results = merge_reference(own, base, spec)
        raw = json.dumps(results.to_dict(), indent=2, allow_nan=False) + "\n"
        table = markdown_table(results)
        write_results(out, {"results.json": lambda p: p.write_text(raw), "results.md": lambda p: p.write_text(table)})
    return results, seconds


def merge_reference(own: RedTeamResults, base: RedTeamResults | None, spec: SweepRedTeam) -> RedTeamResults:
    """A job's red-team results with the base model's (same adversaries and seed) as the reference model: what a red
    team of both models together would have returned. ``base`` None: ``own`` is the base model's."""
    if base is None:
        return dataclasses.replace(own, reference_model=BASE)
    return RedTeamResults(before={BASE: base.before[BASE], **own.before}, runs=(*base.runs_of(BASE), *own.runs),
                          chance=own.chance, metadata={**own.metadata, "reference_from": "the base job's red team"},
                          max_retain_drop=spec.max_retain_drop, reference_model=BASE,
                          recover_margin=spec.recover_margin)  # fmt: skip


def _points(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else 100.0 * x


def results_row(job: Job, results: RedTeamResults, train_seconds: float, redteam_seconds: float) -> dict[str, Any]:
    """The job's row of results.jsonl (docs/sweep.md#results): accuracies in %, the retain cost in points, steps to
    recover (None: not within the attack's steps), the worst post-attack forget accuracy per attack length, timings.

    The durability numbers are `jaxtar.eval.RedTeamResults.summary`'s (worst case over adversaries, each adversary's
    seed-mean curve; the threshold is the base model's pre-attack forget accuracy minus the margin)."""
    s = results.summary(job.variant)
    lengths = {r.adversary: int(r.spec["steps"]) for r in results.runs_of(job.variant)}
    per = results.per_adversary(job.variant)
    worst_after: dict[str, float | None] = {}
    for length in sorted(set(lengths.values())):
        values = [per[a]["forget_after"] for a in per if lengths[a] == length and math.isfinite(per[a]["forget_after"])]
        worst_after[f"worst_forget_after_{length}"] = _points(max(values)) if values else None
    base = results.before[BASE]
    row = dict(
        variant=job.variant,
        seed=job.seed,
        overrides=dict(job.variant_overrides),
        worst_steps_to_recover=s.worst_steps_to_recover,
        worst_recover_adversary=s.worst_recover_adversary,
        attack_budget=s.max_attack_steps,
        retain_cost=_points(base.retain_acc - s.before.retain_acc),
        forget_before=_points(s.before.forget_acc),
        retain_before=_points(s.before.retain_acc),
        worst_forget_auc=_points(s.worst_forget_auc),
        **worst_after,
        worst_forget_adversary=s.worst_adversary,
        diverged_runs=s.diverged_runs,
        train_seconds=round(train_seconds, 1),
        redteam_seconds=round(redteam_seconds, 1),
    )
    return strict_json(row)


# ------------------------------------------------------------------------------------- in a worker process
_PARENT: list[int] = []  # the sweep process of this worker


def init_worker() -> None:
    """A ``--jobs N`` worker: asks Linux to send it SIGTERM when the sweep process dies (a defence then saves a
    checkpoint and stops; an attack or an idle worker just ends), so no orphan keeps writing a folder the next
    ``--resume`` needs."""
    _PARENT[:] = [os.getppid()]
    with contextlib.suppress(Exception):  # best effort: not on every platform
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_job_quietly(job: Job) -> dict[str, Any]:
    """`run_job` without progress bars (a worker process's output would interleave with the others'); a worker
    whose sweep process died exits once the job has stopped (nobody is left to give it another)."""
    try:
        return run_job(job, progress=False)
    finally:
        if _PARENT and os.getppid() != _PARENT[0]:
            os._exit(130)
