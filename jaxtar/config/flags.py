"""Config sections as command-line flags: one flag per dataclass field, its help text from the section's docstring.

Every field of a section becomes a flag (:func:`add_section_flags`): ``--PREFIX.field`` (hyphens or underscores;
PREFIX defaults to the section name) or, for a section added with prefix ``""``, the plain ``--field``. A field's
``metadata`` may set the flag's spelling (:func:`flag`: another name, ``nargs``, a constant for on/off switches, a
positional argument). The help text is the field's line under ``Args:`` in its section's docstring
(:func:`field_docs`), followed by the value the chosen preset gives it: ``-h`` reads the ``--preset`` given before it
(:func:`add_preset_flag`), so ``jaxtar defend tar --preset smollm2 -h`` shows smollm2's values. Flags default to
"not given" (None); :func:`section_overrides` returns the given ones as dotted overrides for
:func:`jaxtar.config.sections.load_preset`. This module imports nothing of jaxtar (no JAX, no circle).

Example:
    >>> import argparse
    >>> from dataclasses import dataclass, field
    >>> @dataclass(frozen=True)
    ... class Attack:
    ...     '''Args:
    ...         steps: attack steps.
    ...         seeds: seeds per adversary.
    ...     '''
    ...     steps: int = 40
    ...     seeds: tuple[int, ...] = field(default=(0,), metadata=flag(nargs="+"))
    >>> p = argparse.ArgumentParser(allow_abbrev=False)
    >>> add_section_flags(p, {"attack": Attack}, tag="x", prefixes={"attack": ""})
    >>> section_overrides(p.parse_args(["--steps", "3", "--seeds", "0", "1"]), "x")
    {'attack.steps': '3', 'attack.seeds': ['0', '1']}
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from collections.abc import Callable, Mapping
from typing import Any

_ARG = re.compile(r"^ {4,}([A-Za-z_][\w, ]*):\s*(.*)$")


def flag(
    *,
    name: str | None = None,
    nargs: str | None = None,
    const: Any = dataclasses.MISSING,
    positional: bool = False,
    required: bool = False,
    metavar: str | None = None,
    help: str | None = None,  # noqa: A002 - argparse's name
) -> dict[str, Any]:
    """A field's ``metadata`` for its flag: another ``name`` (``"--no-progress"``), ``nargs`` (``"+"`` for a list
    given as ``--seeds 0 1``, ``"append"`` for a flag given once per item), ``const`` (an on/off switch that stores
    this value), ``positional`` / ``required`` arguments, the ``metavar`` shown in help and a ``help`` text that
    replaces the docstring's (for a switch whose flag says the opposite of its field, like ``--no-progress``).

    Example:
        >>> flag(name="--no-progress", const=False)["flag"]["const"]
        False
    """
    return {"flag": {"name": name, "nargs": nargs, "const": const, "positional": positional, "required": required,
                     "metavar": metavar, "help": help}}  # fmt: skip


def field_docs(cls: type) -> dict[str, str]:
    """Each field's description from the ``Args:`` section of the dataclass ``cls``'s docstring (Google style; one
    entry may name several fields, ``a, b: text``; continuation lines are joined).

    Example:
        >>> from jaxtar.config import RunConfig
        >>> field_docs(RunConfig)["seed"]
        'fixes the data order, adversary draws and every key (derived from (seed, step)).'
    """
    docs: dict[str, str] = {}
    inside, names, indent = False, [], 0
    for line in (cls.__doc__ or "").splitlines():
        text, this_indent = line.strip(), len(line) - len(line.lstrip())
        if text in ("Args:", "Attributes:"):
            inside, names = True, []
            continue
        if not text:
            inside = inside and not names  # a blank line after the entries ends the section
            continue
        if not inside:
            continue
        match = _ARG.match(line)
        if match and (not names or this_indent <= indent):
            indent, names = this_indent, [n.strip() for n in match.group(1).split(",")]
            docs.update(dict.fromkeys(names, match.group(2).strip()))
        elif names and this_indent > indent:
            for name in names:
                docs[name] = f"{docs[name]} {text}"
    return {name: re.sub(r":\w+:`|`", "", text) for name, text in docs.items()}  # plain text: no RST markup


def _flag_name(prefix: str, name: str) -> list[str]:
    if not prefix:
        return [f"--{name.replace('_', '-')}"]
    base = f"--{prefix}.{name}"
    return list(dict.fromkeys([base.replace("_", "-"), base]))


def add_section_flags(
    parser: Any, sections: Mapping[str, type], *, tag: str, prefixes: Mapping[str, str] | None = None,
    title: str = "{section} (override the preset)",
) -> None:  # fmt: skip
    """One flag per field of every section, stored under ``"{tag}::section.field"`` with default None (not given);
    read them back with :func:`section_overrides`. See the module docstring for the spelling.

    Example:
        >>> import argparse
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Run:
        ...     warmup_steps: int = 1
        >>> p = argparse.ArgumentParser(allow_abbrev=False)
        >>> add_section_flags(p, {"run": Run}, tag="x", prefixes={"run": "my-run"})
        >>> section_overrides(p.parse_args(["--my-run.warmup_steps", "3"]), "x")
        {'run.warmup_steps': '3'}
    """
    for section, cls in sections.items():
        group = parser.add_argument_group(title.format(section=section))
        prefix = (prefixes or {}).get(section, section)
        hints, docs = typing.get_type_hints(cls), field_docs(cls)
        for f in dataclasses.fields(cls):
            spec = f.metadata.get("flag", {})
            dest = f"{tag}::{section}.{f.name}"
            text = (spec.get("help") or docs.get(f.name) or type_name(hints[f.name])).replace("%", "%%")  # argparse
            kwargs: dict[str, Any] = {"help": text, "default": None}
            if spec.get("const", dataclasses.MISSING) is not dataclasses.MISSING:
                kwargs.update(action="store_const", const=spec["const"])
            elif spec.get("nargs") == "append":
                kwargs.update(action="append", metavar=spec.get("metavar") or "V")
            else:
                kwargs.update(nargs=spec.get("nargs"), metavar=spec.get("metavar") or _metavar(hints[f.name]))
            if spec.get("positional"):
                kwargs.pop("default")
                kwargs["metavar"] = spec.get("metavar") or f.name.upper()
                group.add_argument(dest, **kwargs)
                continue
            names = [spec["name"]] if spec.get("name") else _flag_name(prefix, f.name)
            if spec.get("required"):
                kwargs["required"] = True
            action = group.add_argument(names[0], dest=dest, **kwargs)
            action.jaxtar_field = (section, f.name, text)
            for alias in names[1:]:  # the underscore spelling works but is not listed
                group.add_argument(alias, dest=dest, **{**kwargs, "help": argparse.SUPPRESS})


def _metavar(hint: Any) -> str:
    """N for integers, X for numbers, true|false, TEXT, and LIST for lists given as YAML (``[1e-3, 2e-3]``)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    inner = args[0]
    if typing.get_origin(inner) is tuple:
        return _metavar(typing.get_args(inner)[0])
    return {int: "N", float: "X", bool: "true|false"}.get(inner, "TEXT")


def section_overrides(args: Any, tag: str) -> dict[str, Any]:
    """The ``{"section.field": value}`` overrides given as flags added with ``tag`` (see :func:`add_section_flags`):
    text, a list of texts (``nargs`` / append flags) or a switch's constant."""
    head = f"{tag}::"
    return {k[len(head) :]: v for k, v in vars(args).items() if k.startswith(head) and v is not None}


def describe_defaults(parser: Any, sections: Mapping[str, Any], label: str) -> None:
    """Appends ``[label: value]`` (the value ``sections`` = {section: instance} gives) to every config flag's help."""
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list of a parser's actions
        field = getattr(action, "jaxtar_field", None)
        if field is None or field[0] not in sections:
            continue
        section, name, text = field
        value = getattr(sections[section], name)
        if action.const is not None and isinstance(value, bool):  # an on/off switch: say so when the preset sets it
            action.help = f"{text} [{label}: on]" if value == action.const else text
        else:
            action.help = f"{text} [{label}: {_yaml_text(value).replace('%', '%%')}]"


def _yaml_text(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_yaml_text(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _PresetHelp(argparse.Action):
    """``-h``: fills in the preset's values (:func:`describe_defaults`), then prints the help."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        self.sections_of = kwargs.pop("sections_of")
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        preset = getattr(namespace, "preset", None)
        try:
            label, sections = self.sections_of(preset)
        except ValueError as err:  # a bad --preset: show the dataclass defaults and say why
            print(f"note: {err}; showing the defaults\n")
            label, sections = self.sections_of(None)
        describe_defaults(parser, sections, label)
        parser.print_help()
        parser.exit()


def add_preset_flag(
    parser: Any, *, default: str | None, names: list[str], sections_of: Callable[[str | None], tuple[str, Any]],
    kind: str = "preset",
) -> None:  # fmt: skip
    """``--preset NAME|FILE.yaml`` and a ``-h`` that shows the values the preset given before it sets:
    ``sections_of(preset)`` -> (label, {section: instance}) (``preset`` None: the defaults, label "default").
    ``parser`` must be made with ``add_help=False`` (this ``-h`` replaces argparse's).

    Example:
        >>> import argparse
        >>> p = argparse.ArgumentParser(add_help=False)
        >>> add_preset_flag(p, default="toy", names=["toy"], sections_of=lambda name: ("toy", {}))
        >>> p.parse_args([]).preset
        'toy'
    """
    shown = f"{', '.join(names)} or a YAML file" if names else "a YAML file"
    parser.add_argument("-h", "--help", action=_PresetHelp, sections_of=sections_of,
                        help="show this help (with the values of the --preset given before it) and exit")  # fmt: skip
    parser.add_argument("--preset", default=default, metavar="P", help=f"a {kind} ({shown}; default: {default})")


def type_name(hint: Any) -> str:
    """A type annotation as short text (``int | None``)."""
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def add_plain_flags(parser: Any, sections: Mapping[str, type], *, tag: str, title: str = "{section}") -> None:
    """Every field of ``sections`` as a prefix-less flag (``--k``, ``--quick``) whose help shows its default.

    Example:
        >>> import argparse
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Bench:
        ...     '''Args:
        ...         k: attack steps.
        ...     '''
        ...     k: int = 4
        >>> p = argparse.ArgumentParser()
        >>> add_plain_flags(p, {"bench": Bench}, tag="b")
        >>> [a.help for a in p._actions if a.dest == "b::bench.k"]
        ['attack steps. [default: 4]']
    """
    add_section_flags(parser, sections, tag=tag, prefixes=dict.fromkeys(sections, ""), title=title)
    describe_defaults(parser, {name: cls() for name, cls in sections.items()}, "default")
