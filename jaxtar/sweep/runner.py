"""Running a sweep: its folder (claimed, locked, resumable), the jobs (in this process or ``jobs`` worker processes),
the results rows as they complete, and an Optuna study's trials.

The folder holds ``sweep.json`` (the grid's normalized content and its hash: a ``--resume`` must find the same
grid), ``results.jsonl`` (one row per complete variant x seed, rewritten whole and renamed into place, so a kill
leaves the previous rows or the new ones, never half a line), ``runs/<variant>/seed-<s>/`` (each job's defence run
and red team), ``optuna.db`` for a study, and the aggregate of `jaxtar.sweep.report`. A job is complete when its row
is in results.jsonl: ``--resume`` skips those, resumes a defence a kill stopped (``run.resume``) and runs an
unfinished red team again.

Example:
    >>> from jaxtar.config.sweep import load_sweep
    >>> result = run_sweep(load_sweep("toy-smoke"), "runs/sweep-smoke")  # doctest: +SKIP
    >>> print(result.table)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jaxtar.config.sweep import SweepConfig, sweep_hash
from jaxtar.errors import ConfigError, DivergedError, InputError, RunDirError
from jaxtar.files import progress_bar, progress_write, write_text_atomic
from jaxtar.runlock import claim_output_dir, is_new_or_empty
from jaxtar.sweep.grid import (
    Job,
    SweepPlan,
    ask_variant,
    job_key,
    objective_value,
    open_study,
    plan_sweep,
    trial_variant,
)
from jaxtar.sweep.report import describe_row, write_aggregate, write_plots

SWEEP_FILE = "sweep.json"
ROWS_FILE = "results.jsonl"
FORMAT = 1


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """What `run_sweep` produced: the folder, every results row, the results table and the wall-clock seconds."""

    out_dir: Path
    rows: list[dict[str, Any]]
    table: str
    seconds: float


# ------------------------------------------------------------------------------------------------ the folder
def sweep_record(config: SweepConfig) -> dict[str, Any]:
    """What ``sweep.json`` holds: the grid's normalized content, the defence preset as loaded (so an edited preset
    file is noticed too) and the hash of both."""
    from jaxtar.config import load_config

    identity = {"grid": config.identity(), "preset": load_config(config.preset, dict(config.overrides)).to_dict()}
    return {"format": FORMAT, "name": config.name, "hash": sweep_hash(identity), "identity": identity}


def _same_sweep(folder: Path, record: dict[str, Any]) -> bool:
    path = folder / SWEEP_FILE
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"sweep folder {str(folder)!r} is not empty and holds no {SWEEP_FILE}: not a sweep; "
                          "choose a new folder (nothing was written)") from None  # fmt: skip
    except (OSError, ValueError) as err:
        raise RunDirError(f"{path} is unreadable ({err}); refusing to touch {str(folder)!r}") from None
    if not isinstance(stored, dict) or stored.get("hash") != record["hash"]:
        old = (stored.get("identity") or {}) if isinstance(stored, dict) else {}
        diff = _differences(old.get("grid", {}), record["identity"]["grid"]) or ["the defence preset's content"]
        raise RunDirError(
            f"sweep folder {str(folder)!r} holds a sweep of a different grid (differs in: {', '.join(diff[:6])}); "
            "--resume needs the same grid file (nothing was written)"
        )
    return True


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]  # fmt: skip
    return [] if old == new else [prefix.rstrip(".")]


def claim_sweep_dir(out_dir: Path, record: dict[str, Any], resume: bool) -> Any:
    """Locks ``out_dir`` for this sweep (a new or empty folder, or with ``resume`` one holding the same grid) and
    writes its ``sweep.json``; returns the held lock.

    Raises:
        RunDirError: a non-empty folder without ``resume``, a folder holding another grid or no sweep.
        RunLockedError: another process is running this sweep.
    """
    if not resume and not is_new_or_empty(out_dir):
        raise RunDirError(f"sweep folder {str(out_dir)!r} is not empty; pass --resume to continue the sweep it holds "
                          "or choose a new folder (nothing was written)")  # fmt: skip
    lock = claim_output_dir(out_dir, accept=lambda folder: resume and _same_sweep(folder, record), what="sweep folder")
    try:
        if not (out_dir / SWEEP_FILE).is_file():
            _write_synced(out_dir / SWEEP_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
    except BaseException:
        lock.release()
        raise
    return lock


def _write_synced(path: Path, text: str) -> None:
    """``text`` written atomically and fsynced (`jaxtar.files.write_text_atomic`): after a kill or a crash the file
    holds the old text or the new, whole."""
    write_text_atomic(path, text, sync=True)


def read_rows(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a sweep's results.jsonl ([] when it has none yet).

    Raises:
        RunDirError: a line that is not a results row (the file was edited by hand).

    Example:
        >>> read_rows("no-such-sweep")
        []
    """
    path = Path(out_dir) / ROWS_FILE
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("variant"), str) or "seed" not in row:
                raise ValueError("not a results row")
        except ValueError as err:
            raise RunDirError(f"{path}, line {number}: {err}; refusing to continue this sweep") from None
        rows.append(row)
    return rows


class _Rows:
    """results.jsonl as the sweep appends to it (the whole file rewritten and renamed into place each time)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / ROWS_FILE
        self.rows = read_rows(out_dir)

    def done(self, key: str) -> bool:
        return any(job_key(r["variant"], r["seed"]) == key for r in self.rows)

    def of(self, variant: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["variant"] == variant]

    def add(self, row: dict[str, Any]) -> None:
        rows = [*self.rows, row]
        _write_synced(self.path, "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in rows))
        self.rows = rows


# ------------------------------------------------------------------------------------------------ jobs
def _execute(jobs: Sequence[Job], rows: _Rows, workers: int, progress: bool, finished: Callable[[Job, dict], None],
             failed: Callable[[Job, BaseException], bool] | None = None) -> None:  # fmt: skip
    """Runs the jobs not yet complete, each once all it ``needs`` is complete: in this process (``workers`` 1, in
    order) or in ``workers`` spawned processes. ``finished(job, row)`` records each; ``failed(job, err)`` True skips
    a failed job (an Optuna trial that diverged), otherwise the first failure stops the sweep once the jobs running
    then have finished."""
    todo = [j for j in jobs if not rows.done(j.key)]
    if workers == 1:
        for job in todo:
            try:
                row = _run(job, progress)
            except Exception as err:
                if failed is None or not failed(job, err):
                    raise
                continue
            finished(job, row)
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from jaxtar.sweep.job import init_worker, run_job_quietly

    running: dict[Any, Job] = {}
    error: BaseException | None = None
    skipped: set[str] = set()
    context = multiprocessing.get_context("spawn")  # JAX is not fork-safe
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=init_worker) as pool:
        while todo or running:
            ready = [j for j in todo if all(rows.done(n) for n in j.needs)] if error is None else []
            for job in ready[: workers - len(running)]:
                running[pool.submit(run_job_quietly, job)] = job
                todo.remove(job)
            blocked = [j for j in todo if any(n in skipped for n in j.needs)]
            for job in blocked:
                todo.remove(job)
            if not running:
                if todo and error is None:
                    error = RuntimeError(f"jobs {[j.key for j in todo]} wait for jobs that never completed")
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                try:
                    finished(job, future.result())
                except Exception as err:
                    if failed is not None and failed(job, err):
                        skipped.add(job.key)
                    elif error is None:
                        error = err
    if error is not None:
        raise error


def _run(job: Job, progress: bool) -> dict[str, Any]:
    from jaxtar.sweep.job import run_job

    return run_job(job, progress)


# ------------------------------------------------------------------------------------------------ the sweep
def run_sweep(
    config: SweepConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    jobs: int = 1,
    progress: bool = True,
    log: Callable[[str], None] = print,
    source: str | os.PathLike | None = None,
) -> SweepResult:
    """Runs a sweep into ``out_dir``: every variant x seed trained, red-teamed and scored, then the aggregate.

    Args:
        config: the grid (`jaxtar.config.sweep.load_sweep`).
        out_dir: a new (or empty) folder; with ``resume``, one holding a sweep of the same grid.
        resume: continue the sweep in ``out_dir``: complete jobs are skipped, a killed defence resumes from its
            checkpoint, an unfinished red team runs again.
        jobs: how many variant x seed jobs run at once, each in its own process (1: in this process).
        progress: a progress bar over the jobs (and, with one job at a time, the defences' and attacks' bars).
        log: printer for the start and end lines.
        source: the grid file, named in the messages of the checks.

    Raises:
        ConfigError: an invalid grid (checked before anything is written).
        RunDirError: ``out_dir`` holds something else (see `claim_sweep_dir`).

    Example:
        >>> run_sweep(load_sweep("toy-smoke"), "runs/smoke", jobs=2)  # doctest: +SKIP
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise InputError(f"--jobs must be a positive integer, got {jobs!r}")
    start = time.time()
    out = Path(out_dir)
    try:
        plan = plan_sweep(config, out)  # every check, before anything is written
    except ConfigError as err:
        raise ConfigError(f"grid file {str(source)!r}: {err}" if source else str(err)) from None
    record = sweep_record(config)
    with claim_sweep_dir(out, record, resume):
        rows = _Rows(out)
        log(f"jaxtar sweep {config.name}: {_describe(plan, rows)} -> {out}")
        total = len(plan.jobs) + (config.optuna.trials * len(config.seeds) if config.optuna else 0)
        with progress_bar(total, initial=len(rows.rows), enabled=progress, desc="sweep", unit="job") as bar:

            def finished(job: Job, row: dict[str, Any]) -> None:
                rows.add(row)
                write_aggregate(plan, rows.rows)
                bar.update(1)
                line = f"[{len(rows.rows)}/{total}] {describe_row(row)}"
                if progress:
                    progress_write(line)
                else:
                    log(line)

            _execute(plan.jobs, rows, jobs, progress, finished)
            if config.optuna is not None:
                _run_study(plan, rows, jobs, progress, finished, log)
        table = write_aggregate(plan, rows.rows)
        write_plots(plan, rows.rows)
    log(f"\n{table}\nEverything: {out} (results.md, results.json, recovery.png, steps_to_recover.png)")
    return SweepResult(out, rows.rows, table, time.time() - start)


def _describe(plan: SweepPlan, rows: _Rows) -> str:
    config = plan.config
    trials = f" + {config.optuna.trials} Optuna trials" if config.optuna else ""
    done = f", {len(rows.rows)} jobs already complete" if rows.rows else ""
    seeds = f"{len(config.seeds)} seed(s)"
    return f"{len(plan.variants)} variants{trials} x {seeds}, defence {config.defence} (preset {config.preset}){done}"


def _run_study(plan: SweepPlan, rows: _Rows, workers: int, progress: bool, finished: Callable, log: Callable) -> None:
    """The Optuna trials: a killed sweep's running trials first (same parameters, their jobs resumed), then new
    ones until the study holds ``trials``; each trial's value is told once all its seeds' rows exist. A trial whose
    defence diverges is told FAILED and the study goes on."""
    import optuna

    spec, config = plan.config.optuna, plan.config
    assert spec is not None
    study = open_study(spec, plan.out_dir)
    per_batch = max(1, workers // len(config.seeds))  # trials asked at once: enough jobs for the workers
    failed: dict[str, BaseException] = {}

    def skip(job: Job, err: BaseException) -> bool:
        if isinstance(err, DivergedError):
            failed[job.variant] = err
            print(f"{job.key}: {err}; the trial is marked failed", file=sys.stderr)
            return True
        return False

    while True:
        batch = [trial_variant(t, config.defence) for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
        while len(batch) < per_batch and len(study.trials) < spec.trials:
            batch.append(ask_variant(study, spec, config.defence))
        if not batch:
            return
        _execute([j for v in batch for j in plan.jobs_for(v)], rows, workers, progress, finished, skip)
        for variant in batch:
            number = int(variant.name.rsplit("-", 1)[-1])
            value = objective_value(rows.of(variant.name), spec.objective) if variant.name not in failed else None
            if value is None or value != value:  # diverged, or an objective without a value (NaN)
                study.tell(number, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(number, value)
                log(f"{variant.name}: {spec.objective} = {value:g} ({dict(variant.overrides)})")
