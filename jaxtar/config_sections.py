"""Config sections: frozen dataclasses filled from YAML mappings and dotted ``section.field`` overrides or flags.

The one mechanism behind both run configurations (``jaxtar.config`` for TAR / random mapping, ``jaxtar.mlac_config``
for MLAC): values are checked against each field's annotation (:func:`coerce`), unknown names get a suggestion,
flag text is read as YAML, and every field becomes a ``--section.field`` flag (hyphens or underscores).

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
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

import yaml

from jaxtar.errors import ConfigError

MAX_INT = 2**31 - 1  # step counts, sizes and indices are int32 on the device
MAX_SEED = 2**32 - 1  # a PRNG seed is 32 bits


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


def field_types(cls: type) -> dict[str, Any]:
    """The resolved type annotation of every field of the dataclass ``cls``."""
    return typing.get_type_hints(cls)


def suggest(key: str, options: list[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest option, else the list of options."""
    hint = difflib.get_close_matches(key, options, n=1)
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


class _Loader(yaml.SafeLoader):
    """YAML 1.1 without its quirk of reading ``1e-3`` (no dot) as a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Safe YAML with ``1e-3`` read as a float."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def parse_value(text: str) -> Any:
    """A flag value as YAML (``3`` -> 3, ``null`` -> None, ``[1e-3, 2e-3]`` -> a list, ``abc`` -> 'abc').

    Example:
        >>> parse_value("[1e-3, 2e-3]"), parse_value("null"), parse_value("toy:forget")
        ([0.001, 0.002], None, 'toy:forget')
    """
    try:
        return load_yaml(text)
    except yaml.YAMLError:
        return text


def parse_flag(text: str, hint: Any) -> Any:
    """Flag text for a field of type ``hint``: verbatim for strings, YAML otherwise."""
    if hint is str:
        return text
    if typing.get_args(hint) == (str, type(None)):
        return None if text.strip().lower() in ("null", "none", "~") else text
    return parse_value(text)


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
        raw.setdefault(section, {})[name] = parse_flag(value, hints[name]) if isinstance(value, str) else value
    return raw


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


def add_section_flags(
    parser: Any, sections: Mapping[str, type], *, tag: str, prefixes: Mapping[str, str] | None = None,
    title: str = "{section} (override the preset)",
) -> None:  # fmt: skip
    """One ``--PREFIX.field`` flag per field (hyphens or underscores; PREFIX defaults to the section name), stored
    under ``"{tag}::section.field"`` with default None (not given); read them back with :func:`section_overrides`.
    """
    for section, cls in sections.items():
        group = parser.add_argument_group(title.format(section=section))
        prefix = (prefixes or {}).get(section, section)
        hints = field_types(cls)
        for f in dataclasses.fields(cls):
            base = f"--{prefix}.{f.name}"
            aliases = list(dict.fromkeys([base.replace("_", "-"), base]))
            default = f.default if f.default is not dataclasses.MISSING else "-"
            doc = f"{_type_name(hints[f.name])} (dataclass default: {default}; the preset may set another)"
            group.add_argument(*aliases, dest=f"{tag}::{section}.{f.name}", default=None, metavar="V", help=doc)


def section_overrides(args: Any, tag: str) -> dict[str, str]:
    """The ``{"section.field": text}`` overrides given as flags added with ``tag`` (see :func:`add_section_flags`)."""
    head = f"{tag}::"
    return {k[len(head) :]: v for k, v in vars(args).items() if k.startswith(head) and v is not None}


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
