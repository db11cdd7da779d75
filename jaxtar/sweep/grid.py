"""What a sweep runs: its grid expanded into named variants, each variant x seed a `Job`, and the Optuna study that
suggests variants instead of a fixed list.

Every variant's `DefenceConfig` is built here, before anything is written (`plan_sweep`), so an unknown field or an
invalid value in any variant is refused with the config mechanism's own message. The undefended base model is always
the variant ``base`` (the reference of steps to recover and retain cost); with ``start_from`` the shared start run
is a variant too (``random-mapping``), so it is red-teamed beside the TAR variants that start from it.

Example:
    >>> from jaxtar.config.sweep import sweep_from_dict
    >>> grid = sweep_from_dict({"defence": "tar", "variants": {"published": {}, "exact": {"tar.estimator": "exact"}},
    ...                         "grid": {"tar.inner_steps": [8, 32]}}, "demo")
    >>> [v.name for v in expand_variants(grid)]
    ['base', 'published,inner_steps=8', 'published,inner_steps=32', 'exact,inner_steps=8', 'exact,inner_steps=32']
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxtar.config import SECTIONS, load_config
from jaxtar.config.sections import field_types
from jaxtar.config.sweep import BASE, TRIAL_PREFIX, OptunaConfig, SweepConfig, SweepRedTeam
from jaxtar.errors import ConfigError, JaxtarError

METHOD_SECTION = {"tar": "tar", "random-mapping": "random_mapping", "baseline": "baseline"}
# Numeric columns of a results row (docs/sweep.md#results); plus worst_forget_after_<L> per attack length L.
ROW_COLUMNS = ("worst_steps_to_recover", "retain_cost", "forget_before", "retain_before", "worst_forget_auc",
               "train_seconds", "redteam_seconds")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Variant:
    """A named set of overrides: ``kind`` is ``base`` (the undefended model), ``start`` (the shared start run),
    ``variant`` (from the grid file) or ``trial`` (asked by Optuna); ``method`` None = nothing to train."""

    name: str
    method: str | None
    overrides: Mapping[str, Any]
    kind: str = "variant"


@dataclasses.dataclass(frozen=True)
class Job:
    """One variant x seed: train (``method``; None = the base model as it is) into ``folder/defence``, red-team into
    ``folder/redteam``. ``needs``: keys of the jobs that must be complete first."""

    variant: str
    seed: int
    kind: str
    method: str | None
    preset: str
    overrides: Mapping[str, Any]  # every override of its DefenceConfig except the run.* the job sets
    variant_overrides: Mapping[str, Any]  # what distinguishes the variant (the results rows show these)
    folder: Path
    base_folder: Path  # the base job of the same seed (its red team is the reference)
    model: str  # the base model (a named model, folder, file or Hub id)
    redteam: SweepRedTeam
    needs: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return job_key(self.variant, self.seed)

    def config(self, progress: bool = False) -> Any:
        """The job's `DefenceConfig` (its run folder, seed, resume: a killed run continues)."""
        run = {"run.output_dir": str(self.folder / "defence"), "run.seed": self.seed, "run.resume": True,
               "run.export": True, "run.progress": progress}  # fmt: skip
        return load_config(self.preset, {**self.overrides, **run})


def job_key(variant: str, seed: int) -> str:
    """``<variant>/seed-<seed>``: a job's name and its folder under ``runs/``.

    Example:
        >>> job_key("exact", 2)
        'exact/seed-2'
    """
    return f"{variant}/seed-{seed}"


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """A checked sweep: its variants and jobs (for a study: the base and start jobs; trials are added as asked), the
    attack lengths of its red team and the numeric columns of its rows."""

    config: SweepConfig
    out_dir: Path
    variants: tuple[Variant, ...]
    jobs: tuple[Job, ...]
    attack_lengths: tuple[int, ...]
    columns: tuple[str, ...]

    def jobs_for(self, variant: Variant) -> list[Job]:
        """A variant's jobs, one per seed."""
        return [_job(self.config, self.out_dir, variant, seed) for seed in self.config.seeds]


# ------------------------------------------------------------------------------------------------ names
def value_text(value: Any) -> str:
    """A grid value as it appears in a variant name.

    Example:
        >>> [value_text(v) for v in (8, 3e-4, True, None, "exact", [1e-3, 3e-3])]
        ['8', '0.0003', 'true', 'null', 'exact', '0.001+0.003']
    """
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "+".join(value_text(v) for v in value)
    return re.sub(r"[^A-Za-z0-9._+-]", "-", str(value))


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The cartesian product of a grid as (name, overrides), in the file's order; a name joins ``field=value`` with
    commas (the full dotted field where two grid fields share a name).

    Example:
        >>> grid_points({"tar.inner_steps": [8, 32], "tar.estimator": ["tar", "exact"]})[1]
        ('inner_steps=8,estimator=exact', {'tar.inner_steps': 8, 'tar.estimator': 'exact'})
    """
    if not grid:
        return []
    short = {k: k.rsplit(".", 1)[-1] for k in grid}
    label = {k: short[k] if list(short.values()).count(short[k]) == 1 else k for k in grid}
    points = []
    for values in itertools.product(*grid.values()):
        overrides = dict(zip(grid, values))
        points.append((",".join(f"{label[k]}={value_text(v)}" for k, v in overrides.items()), overrides))
    return points


def expand_variants(config: SweepConfig) -> list[Variant]:
    """``base``, the start run (with ``start_from``) and every explicit variant x grid point (an explicit variant's
    name, then the point's); for a study, the trials come later (`ask_variant`).

    Raises:
        ConfigError: two variants with the same name, or a variant and a grid point setting the same field.
    """
    out = [Variant(BASE, None, {}, "base")]
    if config.start_from is not None:
        out.append(Variant(config.start_from, config.start_from, {}, "start"))
    if config.defence == "none" or config.optuna is not None:
        return out
    explicit = list(config.variants.items()) or [("", {})]
    points = grid_points(config.grid) or [("", {})]
    for (name, own), (point, values) in itertools.product(explicit, points):
        both = sorted(set(own) & set(values))
        if both:
            raise ConfigError(f"variant {name!r} and the grid both set {both}; vary a field in one place")
        full = ",".join(n for n in (name, point) if n)
        if any(v.name == full for v in out):
            raise ConfigError(f"two variants are named {full!r}; give the grid values that differ in their names")
        out.append(Variant(full, config.defence, {**own, **values}))
    return out


# ------------------------------------------------------------------------------------------------ jobs
def _job(config: SweepConfig, out_dir: Path, variant: Variant, seed: int) -> Job:
    runs = out_dir / "runs"
    overrides = {**config.overrides, **variant.overrides}
    needs = () if variant.kind == "base" else (job_key(BASE, seed),)
    if variant.kind in ("variant", "trial") and config.start_from is not None:
        start = runs / config.start_from / f"seed-{seed}" / "defence" / "model"
        overrides["model.path"] = str(start)
        needs += (job_key(config.start_from, seed),)
    model = config.overrides.get("model.path") or load_config(config.preset).model.path
    return Job(variant.name, seed, variant.kind, variant.method, config.preset, overrides, dict(variant.overrides),
               runs / variant.name / f"seed-{seed}", runs / BASE / f"seed-{seed}", str(model), config.redteam,
               needs)  # fmt: skip


def check_job(job: Job) -> None:
    """Builds the job's `DefenceConfig` (its checks), naming the variant in the message."""
    if job.method is None:
        return
    try:
        job.config()
    except JaxtarError as err:
        raise ConfigError(f"variant {job.variant!r}: {err}") from None


def build_suite(spec: SweepRedTeam) -> tuple[Any, ...]:
    """The red team's adversaries: the suites concatenated, filtered by ``only``, rescaled by ``steps`` /
    ``batch_size`` / ``lr_scale``.

    Example:
        >>> [a.steps for a in build_suite(SweepRedTeam(suite=("toy", "toy-long"), only=("toy-adamw-1e-3",)))]
        [40, 500]
    """
    from jaxtar.eval.suites import adapt_suite, load_suite

    suite = tuple(a for name in spec.suite for a in load_suite(name))
    if spec.only:
        suite = tuple(a for a in suite if any(k in (a.name or "") for k in spec.only))
        if not suite:
            raise ConfigError(f"redteam.only {list(spec.only)} matches no adversary of {list(spec.suite)}")
    if spec.steps is not None or spec.batch_size is not None or spec.lr_scale != 1.0:
        suite = adapt_suite(suite, steps=spec.steps, batch_size=spec.batch_size, lr_scale=spec.lr_scale)
    return suite


def plan_sweep(config: SweepConfig, out_dir: str | Path) -> SweepPlan:
    """Checks every part of a sweep without writing anything and lists its jobs (seed by seed: the base, the start
    run, then the variants).

    Raises:
        ConfigError: an unknown or invalid override in any variant (the config's own message), an unknown suite,
            an Optuna space or objective that cannot be used, or Optuna missing.

    Example:
        >>> from jaxtar.config.sweep import load_sweep
        >>> plan = plan_sweep(load_sweep("toy-smoke"), "runs/smoke")
        >>> [job.key for job in plan.jobs][:2], plan.attack_lengths
        (['base/seed-0', 'random-mapping/seed-0'], (8,))
    """
    out_dir = Path(out_dir).absolute()  # the jobs' folders and the start run's model path do not depend on the cwd
    variants = expand_variants(config)
    jobs = tuple(_job(config, out_dir, v, seed) for seed in config.seeds for v in variants)
    for job in jobs:
        check_job(job)
    lengths = tuple(sorted({a.steps for a in build_suite(config.redteam)}))
    columns = (*ROW_COLUMNS, *(f"worst_forget_after_{n}" for n in lengths))
    plan = SweepPlan(config, out_dir, tuple(variants), jobs, lengths, columns)
    if config.optuna is not None:
        check_study(plan, config.optuna)
    return plan


# ------------------------------------------------------------------------------------------------ Optuna
def require_optuna() -> Any:
    """The ``optuna`` module, or a `ConfigError` telling how to install it."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("the grid has an optuna section but optuna is not installed: pip install optuna") from None
    return optuna


def _field_type(key: str) -> Any:
    section, _, name = key.partition(".")
    hint = field_types(SECTIONS[section])[name]
    return int if hint is int else float if hint is float else None


def check_study(plan: SweepPlan, spec: OptunaConfig) -> None:
    """Checks a study before it starts: Optuna is installed, the objective is a numeric results column, and every
    value the space can suggest (its bounds and choices) builds a valid config."""
    require_optuna()
    if spec.objective not in plan.columns:
        raise ConfigError(f"optuna.objective {spec.objective!r} is not a numeric results column; choose one of "
                          f"{list(plan.columns)}")  # fmt: skip
    probe = Variant(f"{TRIAL_PREFIX}0", plan.config.defence, {}, "trial")
    for key, space in spec.space.items():
        try:
            kind = _field_type(key) if key.partition(".")[0] in SECTIONS and "." in key else None
        except KeyError:
            kind = None  # an unknown field: load_config below says so, with a suggestion
        values = list(space.choices) if space.choices is not None else [space.low, space.high]
        if space.choices is None and kind not in (int, float):
            values = values[:1]  # a range over a non-numeric (or unknown) field: the config check names it
        if space.choices is None and kind is int:
            if not all(float(v).is_integer() for v in values):
                raise ConfigError(f"optuna.space.{key}: {key} is an integer field; give integer low and high")
            values = [int(v) for v in values]
        for value in values:
            variant = dataclasses.replace(probe, overrides={key: value})
            job = _job(plan.config, plan.out_dir, variant, plan.config.seeds[0])
            try:
                check_job(job)
            except ConfigError as err:
                raise ConfigError(f"optuna.space.{key} = {value!r}: {str(err).split(': ', 1)[-1]}") from None


def open_study(spec: OptunaConfig, out_dir: Path) -> Any:
    """The study in ``out_dir/optuna.db`` (SQLite), created or, on a resume, loaded."""
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(Path(out_dir) / 'optuna.db').resolve()}")
    return optuna.create_study(study_name="sweep", storage=storage, direction=spec.direction, load_if_exists=True,
                               sampler=sampler_for(spec, 0))  # fmt: skip


def sampler_for(spec: OptunaConfig, number: int) -> Any:
    """The sampler that asks trial ``number``: seeded from (``seed``, ``number``), so that a resumed study asks
    what an uninterrupted one would have, given the same finished trials."""
    optuna = require_optuna()
    seed = (spec.seed * 1_000_003 + number) % 2**32
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    extra = {} if spec.startup_trials is None else {"n_startup_trials": spec.startup_trials}
    return optuna.samplers.TPESampler(seed=seed, **extra)


def ask_variant(study: Any, spec: OptunaConfig, defence: str) -> Variant:
    """A new trial asked from ``study``, as the variant ``trial-<n>`` with the suggested overrides."""
    study.sampler = sampler_for(spec, len(study.trials))
    trial = study.ask()
    overrides = {}
    for key, space in spec.space.items():
        if space.choices is not None:
            overrides[key] = trial.suggest_categorical(key, list(space.choices))
        elif _field_type(key) is int:
            step = int(space.step or 1)
            overrides[key] = trial.suggest_int(key, int(space.low), int(space.high), step=step, log=space.log)
        else:
            overrides[key] = trial.suggest_float(key, space.low, space.high, step=space.step, log=space.log)
    return Variant(f"{TRIAL_PREFIX}{trial.number}", defence, overrides, "trial")


def trial_variant(trial: Any, defence: str) -> Variant:
    """The variant of a trial already in the study (one a killed sweep left running)."""
    return Variant(f"{TRIAL_PREFIX}{trial.number}", defence, dict(trial.params), "trial")


def objective_value(rows: Sequence[Mapping[str, Any]], objective: str) -> float:
    """A trial's value: the mean over its seeds' rows of the objective column; a steps-to-recover that is not within
    the attack's budget (null) counts as the budget (a lower bound).

    Example:
        >>> objective_value([{"worst_steps_to_recover": 40}, {"worst_steps_to_recover": None, "attack_budget": 500}],
        ...                 "worst_steps_to_recover")
        270.0
    """
    values = []
    for row in rows:
        value = row.get(objective)
        if value is None and objective == "worst_steps_to_recover":
            value = row["attack_budget"]
        values.append(math.nan if value is None else float(value))
    return float(sum(values) / len(values))
