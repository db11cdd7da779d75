"""Config text as YAML: files and flag values read safely, ``1e-3`` read as a float, a key given twice refused.

Example:
    >>> parse_value("[1e-3, 2e-3]")
    [0.001, 0.002]
"""

from __future__ import annotations

import re
import typing
from typing import Any

import yaml

from jaxtar.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 without its quirk of reading ``1e-3`` (no dot) as a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Safe YAML with ``1e-3`` read as a float; a key given twice in one mapping is refused (YAML would silently
    keep the last).

    Example:
        >>> load_yaml("tar: {lr: 1e-3}")
        {'tar': {'lr': 0.001}}
        >>> load_yaml("tar:\\n  lr: 1\\n  lr: 2")
        Traceback (most recent call last):
        jaxtar.errors.ConfigError: duplicate key 'lr' in tar (line 3)
    """
    _refuse_duplicate_keys(yaml.compose(text, Loader=_Loader))  # noqa: S506 - a SafeLoader subclass
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _refuse_duplicate_keys(node: Any, where: str = "", walked: set[int] | None = None) -> None:
    walked = set() if walked is None else walked
    if id(node) in walked:  # an alias of a node already checked (also ends a recursive alias)
        return
    walked.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                raise ConfigError(f"duplicate key {name!r} in {where or 'the text'} (line {key.start_mark.line + 1})")
            seen.add(name)
            _refuse_duplicate_keys(value, f"{where}.{name}" if where else name, walked)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(item, where, walked)


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
