"""The grid file of ``jaxtar sweep``: which defence variants to train, on which seeds, and the red team that scores
them (docs/sweep.md).

A grid file is YAML with the keys of :class:`SweepConfig`; its ``redteam`` section is a :class:`SweepRedTeam` (the
fields of ``jaxtar redteam``'s flags) and its optional ``optuna`` section an :class:`OptunaConfig` whose ``space``
maps dotted config fields to :class:`ParamSpace` ranges. Everything here is checked in ``__post_init__`` (a
:class:`~jaxtar.errors.ConfigError` naming the file and the key); that each override names a real config field with a
valid value is checked by building every variant's `DefenceConfig` (`jaxtar.sweep.grid.plan_sweep`). No JAX here.

Example:
    >>> grid = sweep_from_dict({"defence": "tar", "seeds": [0, 1], "variants": {"published": {},
    ...                         "exact": {"tar.estimator": "exact"}}, "redteam": {"suite": "toy-long"}}, "demo")
    >>> grid.name, grid.seeds, list(grid.variants), grid.redteam.suite
    ('demo', (0, 1), ['published', 'exact'], ('toy-long',))
    >>> sweep_from_dict({"defence": "tar", "seed": [0]}, "demo")
    Traceback (most recent call last):
    ...
    jaxtar.errors.ConfigError: unknown key 'seed'; did you mean 'seeds'?
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jaxtar.config.redteam import AttackConfig, EvalDataConfig
from jaxtar.config.sections import (
    MAX_SEED,
    build_section,
    check_values,
    coerce,
    field_types,
    load_yaml,
    non_negative,
    one_of,
    plain,
    positive,
    suggest,
)
from jaxtar.errors import ConfigError, JaxtarError

DEFENCES = ("tar", "random-mapping", "baseline", "none")
START_FROM = ("random-mapping",)
DIRECTIONS = ("minimize", "maximize")
SAMPLERS = ("tpe", "random")
BASE = "base"  # the undefended base model's variant (red-teamed once per seed: the reference)
TRIAL_PREFIX = "trial-"  # Optuna trial n is the variant trial-<n>
# run.* fields the sweep sets itself (each job's folder, seed, resume, export for the red team, progress)
SWEEP_OWNED = ("run.output_dir", "run.seed", "run.resume", "run.export", "run.progress")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


@dataclass(frozen=True)
class SweepRedTeam:
    """The red team every variant x seed gets (``jaxtar redteam``'s flags of the same names); each job is attacked
    with its own seed.

    Args:
        suite: adversary suites (names or .json / .yaml files), concatenated: ``toy-long`` (500-step attacks),
            ``[toy, toy-long]`` (40- and 500-step attacks), ``redteam-bio``, ...
        only: keep the adversaries whose name contains one of these substrings ([] = all).
        steps: rescale every attack to this many steps (null = the suites').
        batch_size: every attack's batch size (null = the suites').
        lr_scale: multiply every attack's learning rate.
        chunk_steps: attack steps per compiled chunk.
        eval_every: score forget / retain accuracy every this many attack steps: the recovery curves that steps to
            recover come from (required).
        recover_margin: recovered = forget accuracy >= the base model's pre-attack forget accuracy minus this.
        max_retain_drop: the capability guard of the guarded worst case (null = none).
        data: ``toy`` (the offline toy world) or a domain's datasets (``bio``, ``cyber``).
        data_seed: the toy world's seed.
        local: local copies of dataset roles as ROLE=PATH.
        mcq_limit: score at most this many questions per set (null = all).
        shots: few-shot examples in the retain prompts.
        eval_batch_size: prompts per scoring batch.
    """

    suite: tuple[str, ...] = ("toy-long",)
    only: tuple[str, ...] = ()
    steps: int | None = None
    batch_size: int | None = None
    lr_scale: float = 1.0
    chunk_steps: int = 50
    eval_every: int | None = 20
    recover_margin: float = 0.05
    max_retain_drop: float | None = 0.1
    data: str = "toy"
    data_seed: int = 0
    local: tuple[str, ...] = ()
    mcq_limit: int | None = None
    shots: int = 5
    eval_batch_size: int = 32

    def __post_init__(self) -> None:
        check_values(self)
        if not self.suite or not all(self.suite):
            raise ConfigError("redteam.suite must name at least one adversary suite")
        if self.eval_every is None:
            raise ConfigError("redteam.eval_every is required: steps to recover come from the curves it records")
        try:
            self.attack_config()
            self.data_config()
        except JaxtarError as err:
            raise ConfigError(f"redteam: {err}") from None

    def attack_config(self, suite: str | None = None) -> AttackConfig:
        """The `AttackConfig` of one of the suites (the checks of ``jaxtar redteam``'s flags)."""
        names = ("steps", "batch_size", "lr_scale", "chunk_steps", "eval_every", "recover_margin", "max_retain_drop")
        return AttackConfig(suite=suite or self.suite[0], only=",".join(self.only) or None,
                            **{n: getattr(self, n) for n in names})  # fmt: skip

    def data_config(self) -> EvalDataConfig:
        """The `EvalDataConfig` the red team scores and attacks with."""
        names = ("data", "data_seed", "local", "mcq_limit", "shots", "eval_batch_size")
        return EvalDataConfig(**{n: getattr(self, n) for n in names})


@dataclass(frozen=True)
class ParamSpace:
    """The range of one searched config field: ``low`` .. ``high`` (``log``: sampled on a log scale; ``step``: on a
    grid) or a list of ``choices``. Integer fields (``tar.inner_steps``) are sampled as integers.

    Example:
        >>> ParamSpace(low=1e-4, high=3e-3, log=True).log
        True
        >>> ParamSpace(low=1.0)
        Traceback (most recent call last):
        ...
        jaxtar.errors.ConfigError: ParamSpace: give low and high, or choices
    """

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        check_values(self)
        ranged = self.low is not None and self.high is not None
        if ranged == (self.choices is not None) or (not ranged and (self.low, self.high) != (None, None)):
            raise ConfigError("ParamSpace: give low and high, or choices")
        if self.choices is not None:
            if self.log or self.step is not None:
                raise ConfigError("ParamSpace: log and step apply to a low..high range, not to choices")
            if not self.choices or any(not isinstance(c, str | int | float | bool | None) for c in self.choices):
                raise ConfigError(f"ParamSpace.choices must be a non-empty list of plain values, got {self.choices!r}")
            if len(set(map(repr, self.choices))) != len(self.choices):
                raise ConfigError(f"ParamSpace.choices names a value twice: {list(self.choices)}")
            return
        if not self.low < self.high:
            raise ConfigError(f"ParamSpace: low ({self.low}) must be < high ({self.high})")
        positive(self, "step")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ConfigError("ParamSpace: a log scale needs low > 0 and no step")


@dataclass(frozen=True)
class OptunaConfig:
    """A study instead of a fixed list: Optuna asks ``trials`` variants from ``space`` (variant ``trial-<n>``), each
    trained and red-teamed on every seed, and learns from its ``objective`` (the mean over seeds of a column of the
    results rows, docs/sweep.md#results).

    Args:
        trials: how many trials the study runs in all (a resumed study counts the ones it already has).
        objective: the results-row column to optimise (``worst_steps_to_recover``, ``worst_forget_after_500``, ...).
        direction: ``maximize`` or ``minimize`` the objective.
        sampler: ``tpe`` (Optuna's TPESampler) or ``random``.
        seed: the sampler's seed.
        startup_trials: random trials before TPE models the results (null = Optuna's default, 10).
        space: {dotted config field: its range (ParamSpace)}.
    """

    trials: int = 0
    objective: str = ""
    direction: str = ""
    sampler: str = "tpe"
    seed: int = 0
    startup_trials: int | None = None
    space: Mapping[str, ParamSpace] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_values(self)
        if self.trials < 1:
            raise ConfigError(f"optuna.trials must be >= 1, got {self.trials}")
        if not self.objective:
            raise ConfigError("optuna.objective is required: a column of the results rows (docs/sweep.md#results)")
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"optuna.direction must be one of {DIRECTIONS}, got {self.direction!r}")
        one_of(self, "sampler", SAMPLERS)
        if self.startup_trials is not None:
            non_negative(self, "startup_trials")
        if not self.space:
            raise ConfigError("optuna.space must name at least one config field to search")


@dataclass(frozen=True)
class SweepConfig:
    """A whole grid file.

    Args:
        name: a label for the tables (default: the file's name).
        description: a line printed above the results table.
        defence: ``tar``, ``random-mapping``, ``baseline`` or ``none`` (only the undefended base is red-teamed).
        preset: the defence preset (a name in jaxtar/configs or a YAML file).
        overrides: dotted config overrides applied to every variant (and the start run).
        start_from: ``random-mapping``: every TAR variant of a seed starts from one random-mapping run of that seed
            (trained once, red-teamed as the variant ``random-mapping``); null = from the base model.
        seeds: the seeds: each variant's ``run.seed`` and its red team's seed.
        variants: named override sets ({name: {dotted field: value}}).
        grid: {dotted field: [values]}: the cartesian product, crossed with ``variants`` when both are given.
        redteam: the red team (SweepRedTeam).
        optuna: an Optuna study (OptunaConfig) instead of ``variants`` / ``grid``.
    """

    name: str = ""
    description: str = ""
    defence: str = "tar"
    preset: str = "toy"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    start_from: str | None = None
    seeds: tuple[int, ...] = (0,)
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    grid: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    redteam: SweepRedTeam = field(default_factory=SweepRedTeam)
    optuna: OptunaConfig | None = None

    def __post_init__(self) -> None:
        one_of(self, "defence", DEFENCES)
        one_of(self, "start_from", START_FROM, optional=True)
        if not self.preset:
            raise ConfigError("preset must name a defence preset or a YAML file")
        if self.start_from is not None and self.defence != "tar":
            raise ConfigError(f"start_from applies to defence 'tar' not {self.defence!r}")
        seeds = list(self.seeds)
        if not seeds or len(set(seeds)) != len(seeds) or not all(0 <= s <= MAX_SEED for s in seeds):
            raise ConfigError(f"seeds must be distinct integers in [0, {MAX_SEED}] (at least one), got {seeds}")
        _overrides(self.overrides, "overrides")
        for name, values in self.variants.items():
            if not isinstance(name, str) or not _NAME.match(name):
                raise ConfigError(f"variant name {name!r} must be letters, digits, '.', '_' or '-' (a folder name)")
            _overrides(values, f"variants.{name}")
        for key, values in self.grid.items():
            _overrides({key: None}, "grid")
            if not isinstance(values, tuple) or not values:
                raise ConfigError(f"grid.{key} must be a non-empty list of values, got {values!r}")
        if not isinstance(self.redteam, SweepRedTeam):
            raise ConfigError("redteam must be a mapping of red-team settings")
        self._check_variants()

    def _check_variants(self) -> None:
        searched = self.variants or self.grid
        if self.defence == "none":
            if searched or self.optuna is not None or self.start_from is not None:
                raise ConfigError("defence 'none' red-teams the base model only: give no variants, grid or optuna")
            return
        if self.optuna is not None and searched:
            raise ConfigError("give either optuna (a study) or variants / grid (a fixed list), not both")
        if self.optuna is None and not searched:
            raise ConfigError("the sweep is empty: give variants, a grid or an optuna section")
        reserved = {BASE, *([self.start_from] if self.start_from else [])}
        clash = sorted(n for n in self.variants if n in reserved or n.startswith(TRIAL_PREFIX))
        if clash:
            raise ConfigError(f"variant name(s) {clash} are taken: 'base', the start run and 'trial-N' are the "
                              "sweep's own")  # fmt: skip
        varied = [*self.grid, *(self.optuna.space if self.optuna else ())]
        keys = varied + [k for values in self.variants.values() for k in values]
        for key in keys:
            shared = ("model.",) + (("random_mapping.",) if self.start_from else ())
            if key.startswith(shared):
                why = "the base model" if key.startswith("model.") else "the start run"
                raise ConfigError(f"{key} cannot vary between variants: {why} is shared by all (set it in overrides)")

    def identity(self) -> dict[str, Any]:
        """The grid as plain data (what ``sweep.json`` stores and a ``--resume`` compares).

        Example:
            >>> SweepConfig(variants={"a": {}}).identity()["defence"]
            'tar'
        """
        d = plain(self)
        for label in ("name", "description"):  # labels: renaming the file or rewording it changes no number
            d.pop(label)
        return json.loads(json.dumps(d, sort_keys=True))


def _overrides(values: Any, where: str) -> None:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a mapping of dotted config fields to values, got {values!r}")
    for key in values:
        if not isinstance(key, str) or "." not in key:
            raise ConfigError(f"{where}: {key!r} is not a dotted config field (section.field, e.g. tar.inner_steps)")
        if key in SWEEP_OWNED:
            raise ConfigError(f"{where}: {key} is set by the sweep for each job (seeds, --output); leave it out")


def sweep_hash(identity: Mapping[str, Any]) -> str:
    """The SHA-256 of a grid's normalized content.

    Example:
        >>> sweep_hash({"a": 1}) == sweep_hash({"a": 1.0}), len(sweep_hash({}))
        (False, 64)
    """
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


_KEYS = [f.name for f in dataclasses.fields(SweepConfig)]


def sweep_from_dict(raw: Any, name: str) -> SweepConfig:
    """A `SweepConfig` from a grid file's parsed YAML (``name``: its default label).

    Raises:
        ConfigError: an unknown key (with a suggestion), a value of the wrong type, an invalid grid.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a grid file must be a mapping of keys ({', '.join(_KEYS)}), got {type(raw).__name__}")
    raw = dict(raw)
    for key in raw:
        if key not in _KEYS:
            raise ConfigError(f"unknown key {key!r}{suggest(str(key), _KEYS)}")
    raw["redteam"] = build_section("redteam", SweepRedTeam, _mapping(raw.get("redteam") or {}, "redteam"))
    if raw.get("optuna") is not None:
        spec = dict(_mapping(raw["optuna"], "optuna"))
        space = _mapping(spec.get("space") or {}, "optuna.space")
        spec["space"] = {str(k): build_section(f"optuna.space.{k}", ParamSpace, _mapping(v, f"optuna.space.{k}"))
                         for k, v in space.items()}  # fmt: skip
        raw["optuna"] = build_section("optuna", OptunaConfig, spec)
    for key in ("overrides", "variants", "grid"):
        raw[key] = _mapping(raw.get(key) or {}, key)
    raw["variants"] = {k: _mapping(v or {}, f"variants.{k}") for k, v in raw["variants"].items()}
    raw["grid"] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw["grid"].items()}
    raw["name"] = raw.get("name") or name
    hints = field_types(SweepConfig)
    try:
        return SweepConfig(**{k: coerce(v, hints[k], k) for k, v in raw.items()})
    except (TypeError, ValueError) as err:
        raise err if isinstance(err, ConfigError) else ConfigError(str(err)) from None


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    return dict(value)


def sweep_file(path: str | Path) -> Path:
    """The grid file ``path`` names: a path, or the name of a shipped grid.

    Example:
        >>> sweep_file("toy-smoke").name
        'toy-smoke.yaml'
    """
    file = Path(path)
    if file.suffix not in (".yaml", ".yml") and not file.exists():
        file = SWEEP_DIR / f"{path}.yaml"
        if not file.is_file():
            raise ConfigError(f"no grid file {str(path)!r}; shipped grids: {shipped_sweeps()}")
    if not file.is_file():
        raise ConfigError(f"grid file {str(path)!r} does not exist")
    return file


def load_sweep(path: str | Path) -> SweepConfig:
    """Reads and checks a grid file: a path, or the name of a shipped grid (``toy-durability``, ``toy-smoke``).

    Raises:
        ConfigError: the file is missing or not YAML, or its grid is invalid (the message names the file).

    Example:
        >>> load_sweep("toy-smoke").defence
        'tar'
    """
    file = sweep_file(path)
    try:
        return sweep_from_dict(load_yaml(file.read_text()), file.stem)
    except yaml.YAMLError as err:
        raise ConfigError(f"grid file {str(file)!r} is not valid YAML: {' '.join(str(err).split())}") from None
    except ConfigError as err:
        raise ConfigError(f"grid file {str(file)!r}: {err}") from None


SWEEP_DIR = Path(__file__).resolve().parent.parent / "configs" / "sweeps"


def shipped_sweeps() -> list[str]:
    """The grid files shipped in ``jaxtar/configs/sweeps``.

    Example:
        >>> shipped_sweeps()
        ['toy-durability', 'toy-smoke']
    """
    return sorted(p.stem for p in SWEEP_DIR.glob("*.yaml"))
