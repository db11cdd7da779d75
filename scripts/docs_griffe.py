"""A griffe extension for the docs site: jaxtar's ``Example:`` sections rendered as examples (code), not prose.

jaxtar's docstrings head their doctests ``Example:`` (or ``Example (what it shows):``). Griffe's Google parser
reads only ``Examples:`` as an examples section, whose ``>>>`` blocks become code; under ``Example:`` the doctests
would be parsed as Markdown (``d["a"]["b"]`` read as a link). This renames the heading before griffe parses the
docstring, keeping any parenthetical as the section's first line. Used by ``mkdocs.yml`` (mkdocstrings' python
handler, ``extensions:``); the docstrings themselves are unchanged.
"""

from __future__ import annotations

import re

import griffe

_HEADING = re.compile(r"^(?P<indent>[ \t]*)Example(?: \((?P<note>.*)\))?:[ \t]*$", re.MULTILINE)


def _as_examples(match: re.Match) -> str:
    indent, note = match["indent"], match["note"]
    return f"{indent}Examples:" + (f"\n{indent}    ({note}):" if note else "")


class ExampleSections(griffe.Extension):
    """Renames ``Example:`` headings to ``Examples:`` in every docstring griffe loads."""

    def on_object(self, *, obj: griffe.Object, **kwargs: object) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _HEADING.sub(_as_examples, obj.docstring.value)
