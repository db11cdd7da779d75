"""The config mechanism: frozen dataclass sections filled from a YAML preset, dotted overrides and flags.

A run configuration is a frozen dataclass whose dataclass-typed fields are its *sections* (``DefenceConfig.tar``,
``MLACRunConfig.mlac``, ...). :func:`load_preset` reads a preset (a shipped name or a YAML file), applies dotted
``section.field`` overrides and builds every section; values are checked against each field's annotation
(:func:`coerce`), unknown names get a suggestion, flag text is read as YAML, and `jaxtar.config.flags` turns every
field into a flag that :func:`section_overrides` reads back. Every
problem is a :class:`~jaxtar.errors.ConfigError` (the CLI exits 2 with its message).

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Run:
    ...     steps: int = 1
    >>> raw = merge_overrides({}, {"run": Run}, {"run.steps": "3"})
    >>> build_section("run", Run, raw["run"])
    Run(steps=3)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from jaxtar.config.flags import add_section_flags, section_overrides  # noqa: F401 - the mechanism's flag half
from jaxtar.config.yaml_text import load_yaml, parse_flag, parse_value  # noqa: F401 - the mechanism's text half
from jaxtar.errors import ConfigError

MAX_INT = 2**31 - 1  # step counts, sizes and indices are int32 on the device
MAX_SEED = 2**32 - 1  # a PRNG seed is 32 bits


# ----------------------------------------------------------------------------------------------- field values
def check_values(obj: Any) -> None:
    """Refuses values no run can use, for every field of the dataclass ``obj`` (call it in ``__post_init__``):
    a float that is inf or NaN (also inside tuples), an integer beyond int32, a ``*seed`` outside [0, 2**32).

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Tar:
        ...     lr: float = 1e-3
        ...     def __post_init__(self): check_values(self)
        >>> Tar(lr=float("inf"))
        Traceback (most recent call last):
        ...
        jaxtar.errors.ConfigError: Tar.lr must be a finite number, got inf
    """
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        where = f"{type(obj).__name__}.{f.name}"
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{where} must be a finite number, got {v!r}")
            if isinstance(v, int) and not isinstance(v, bool):
                if f.name.endswith("seed") and not 0 <= v <= MAX_SEED:
                    raise ConfigError(f"{where} must be in [0, {MAX_SEED}] (a 32-bit seed), got {v}")
                if not f.name.endswith("seed") and abs(v) > MAX_INT:
                    raise ConfigError(f"{where} = {v} is out of range (at most {MAX_INT})")


def positive(obj: Any, *names: str) -> None:
    """Refuses a field of ``obj`` that is not > 0 (None passes: "not set")."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and not value > 0:
            raise ConfigError(f"{type(obj).__name__}.{name} must be > 0, got {value!r}")


def non_negative(obj: Any, *names: str) -> None:
    """Refuses a field of ``obj`` that is < 0."""
    for name in names:
        if getattr(obj, name) < 0:
            raise ConfigError(f"{type(obj).__name__}.{name} must be >= 0, got {getattr(obj, name)!r}")


def unit_interval(obj: Any, *names: str) -> None:
    """Refuses a field of ``obj`` outside [0, 1)."""
    for name in names:
        if not 0.0 <= getattr(obj, name) < 1.0:
            raise ConfigError(f"{type(obj).__name__}.{name} must be in [0, 1), got {getattr(obj, name)!r}")


def one_of(obj: Any, name: str, choices: Sequence[str], *, optional: bool = False) -> None:
    """Refuses a field of ``obj`` whose value is not in ``choices`` (None passes when ``optional``)."""
    value = getattr(obj, name)
    if not (optional and value is None) and value not in choices:
        raise ConfigError(f"{type(obj).__name__}.{name} must be one of {tuple(choices)}, got {value!r}")


def check_schedule_free(obj: Any) -> None:
    """Checks the schedule-free AdamW fields of a section (lr, warmup_steps, b1, b2, eps, weight_decay)."""
    positive(obj, "lr", "eps")
    non_negative(obj, "warmup_steps", "weight_decay")
    unit_interval(obj, "b1", "b2")
    if obj.b1 == 0.0:
        raise ConfigError(f"{type(obj).__name__}.b1 must be > 0 (schedule-free AdamW interpolates with weight b1)")


def field_types(cls: type) -> dict[str, Any]:
    """The resolved type annotation of every field of the dataclass ``cls``."""
    return typing.get_type_hints(cls)


def sections_of(cls: type) -> dict[str, type]:
    """The sections of the run-config dataclass ``cls``: its fields whose type is a dataclass, in field order.

    Example:
        >>> from jaxtar.config import DefenceConfig
        >>> list(sections_of(DefenceConfig))
        ['model', 'data', 'run', 'tar', 'random_mapping', 'baseline']
    """
    hints = field_types(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}


def check_sections(obj: Any) -> None:
    """Refuses a run config ``obj`` whose sections are not instances of their dataclasses (call it in
    ``__post_init__``)."""
    check_values(obj)
    for name, cls in sections_of(type(obj)).items():
        if not isinstance(getattr(obj, name), cls):
            raise ConfigError(f"{type(obj).__name__}.{name} must be a {cls.__name__}")


def plain(obj: Any) -> Any:
    """``obj`` as plain YAML data: dataclasses as dicts, tuples as lists (the form written to ``config.yaml``)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


def suggest(key: str, options: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest option, else the list of options."""
    hint = difflib.get_close_matches(key, list(options), n=1)
    return f"; did you mean {hint[0]!r}?" if hint else f"; known: {sorted(options)}"


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check / convert a YAML or flag value to the field's annotated type (``where`` names it in errors).

    Example:
        >>> coerce(2.0, int, "tar.steps"), coerce("2e-5", float, "tar.lr"), coerce(3, tuple[int, ...], "x")
        (2, 2e-05, (3,))
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], where)
    if origin is tuple:
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return tuple(coerce(v, args[0], where) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "2e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


# ------------------------------------------------------------------------------------- sections and presets
def merge_overrides(
    raw: dict[str, dict[str, Any]], sections: Mapping[str, type], overrides: Mapping[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """``raw`` (section -> {field: value}) updated with dotted overrides; string values are parsed as flag text.

    Raises:
        ConfigError: an override names an unknown section or field.
    """
    dotted = [f"{s}.{f}" for s, cls in sections.items() for f in field_types(cls)]
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        if section not in sections or not name:
            raise ConfigError(f"unknown field {key!r}: use 'section.field' with a section in {sorted(sections)}")
        hints = field_types(sections[section])
        if name not in hints:
            raise ConfigError(f"unknown field {key!r}{suggest(f'{section}.{name}', dotted)}")
        if isinstance(value, str):
            value = parse_flag(value, hints[name])
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):  # --seeds 0 1, --local a --local b
            value = [parse_flag(v, _item_type(hints[name])) for v in value]
        raw.setdefault(section, {})[name] = value
    return raw


def _item_type(hint: Any) -> Any:
    """The item type of a ``tuple[X, ...]`` annotation (also inside ``| None``); ``hint`` itself otherwise."""
    inner = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) in (
        typing.Union, types.UnionType) else [hint]  # fmt: skip
    return typing.get_args(inner[0])[0] if typing.get_origin(inner[0]) is tuple else inner[0]


def build_section(name: str, cls: type, values: Mapping[str, Any]) -> Any:
    """``cls(**values)`` with every value coerced to its field's type; errors become :class:`ConfigError`."""
    hints = field_types(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"unknown field '{name}.{key}'{suggest(f'{name}.{key}', [f'{name}.{h}' for h in hints])}")
        kwargs[key] = coerce(value, hints[key], f"{name}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{name}: {err}") from err


@dataclasses.dataclass(frozen=True)
class PresetFolder:
    """A folder of named YAML presets (``<name>.yaml``); ``kind`` names them in messages (``"MLAC preset"``).

    Example:
        >>> from jaxtar.config import DEFENCE_PRESETS
        >>> DEFENCE_PRESETS.find("tyo")
        Traceback (most recent call last):
        ...
        jaxtar.errors.ConfigError: unknown preset 'tyo'; known presets: [...]; did you mean 'toy'?
    """

    folder: Path
    kind: str = "preset"

    def names(self) -> list[str]:
        """The presets in the folder, sorted."""
        return sorted(p.stem for p in self.folder.glob("*.yaml"))

    def find(self, preset: str | Path) -> Path:
        """The file of ``preset``: a ``.yaml`` / ``.yml`` path as given, else ``<folder>/<preset>.yaml``."""
        path = Path(preset)
        if path.suffix in (".yaml", ".yml"):
            if not path.is_file():
                raise ConfigError(f"preset file {str(path)!r} does not exist")
            return path
        candidate = self.folder / f"{preset}.yaml"
        if not candidate.is_file():
            hint = difflib.get_close_matches(str(preset), self.names(), n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"unknown {self.kind} {str(preset)!r}; known presets: {self.names()}{extra}")
        return candidate


def read_preset(path: Path, sections: Mapping[str, type], external_sections: Sequence[str] = ()) -> dict[str, Any]:
    """The sections of the YAML preset ``path`` as ``{section: {field: value}}``; ``external_sections`` (other
    commands' settings) are skipped, any other unknown section is refused."""
    try:
        loaded = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"preset {str(path)!r} is not valid YAML: {err}") from err
    except ConfigError as err:
        raise ConfigError(f"preset {str(path)!r}: {err}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"preset {str(path)!r} must be a mapping of sections, got {type(loaded).__name__}")
    raw: dict[str, Any] = {}
    for section, values in loaded.items():
        if section in external_sections:
            continue
        if section not in sections:
            raise ConfigError(f"unknown section {section!r} in {str(path)!r}{suggest(str(section), list(sections))}")
        if not isinstance(values, dict):
            raise ConfigError(f"section {section!r} in {str(path)!r} must be a mapping")
        raw[section] = dict(values)
    return raw


def load_preset(
    preset: str | Path | None,
    sections: Mapping[str, type],
    overrides: Mapping[str, Any] | None = None,
    external_sections: Sequence[str] = (),
    *,
    presets: PresetFolder | None = None,
) -> tuple[str, dict[str, Any]]:
    """Every section built from a preset (a name in ``presets`` or a YAML path; None = the dataclass defaults) plus
    dotted overrides; returns the preset's label (its file's stem, "" for None) and ``{section: instance}``.

    Raises:
        ConfigError: unknown preset, section or field; a value of the wrong type; a value the dataclass rejects.
    """
    raw: dict[str, Any] = {}
    label = ""
    if preset is not None:
        if presets is None:
            raise ConfigError(f"this command has no presets, got {str(preset)!r}")
        path = presets.find(preset)
        label = path.stem
        raw = read_preset(path, sections, external_sections)
    merge_overrides(raw, sections, overrides)
    return label, {name: build_section(name, cls, raw.get(name, {})) for name, cls in sections.items()}


def settings_from_flags(
    args: Any, sections: Mapping[str, type], tag: str, preset: str | Path | None = None,
    presets: PresetFolder | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``{section: instance}`` from ``preset`` (None: the dataclass defaults) and the flags added with ``tag``
    (`jaxtar.config.flags.add_section_flags`): what a command reads its settings with.

    Example:
        >>> import argparse
        >>> from dataclasses import dataclass
        >>> from jaxtar.config.flags import add_plain_flags
        >>> @dataclass(frozen=True)
        ... class Bench:
        ...     k: int = 4
        >>> p = argparse.ArgumentParser()
        >>> add_plain_flags(p, {"bench": Bench}, tag="b")
        >>> settings_from_flags(p.parse_args(["--k", "8"]), {"bench": Bench}, "b")["bench"]
        Bench(k=8)
    """
    return load_preset(preset, sections, section_overrides(args, tag), presets=presets)[1]
