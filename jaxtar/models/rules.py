"""Rule tables mapping Hugging Face checkpoint keys to leaves of our params tree.

A ``Rule`` says: the HF tensor ``hf_key`` (with ``{i}`` standing for the layer index of stacked layers) is the leaf at
``path`` after ``transform``. Transforms are named so that the table reads like documentation and both directions
(load and save) come from one place.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Transform:
    """A pair of inverse array maps between the HF layout and ours, plus the HF shape of one of our shapes."""

    name: str
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    hf_shape: Callable[[tuple[int, ...]], tuple[int, ...]]


IDENTITY = Transform("identity", lambda x: x, lambda x: x, lambda s: tuple(s))
TRANSPOSE = Transform("transpose", lambda x: x.T, lambda x: x.T, lambda s: tuple(reversed(s)))


@dataclasses.dataclass(frozen=True)
class Rule:
    """``hf_key`` (``{i}`` = layer index) <-> the leaf at ``path`` (layer axis first when stacked)."""

    hf_key: str
    path: Path
    transform: Transform = IDENTITY

    @property
    def stacked(self) -> bool:
        return "{i}" in self.hf_key

    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + re.escape(self.hf_key).replace(r"\{i\}", r"(?P<i>\d+)") + "$")

    def key(self, layer: int | None = None) -> str:
        return self.hf_key.format(i=layer) if self.stacked else self.hf_key


@dataclasses.dataclass(frozen=True)
class AliasRule(Rule):
    """A ``Rule`` that also matches older spellings of its key; saving always writes ``hf_key`` itself.

    Attributes:
        optional_prefix: a leading prefix (e.g. ``"transformer."``, ``"bert."``) that checkpoints may or may not
            carry, whether or not ``hf_key`` starts with it.
        legacy_suffixes: ``(current, legacy)`` pairs, e.g. ``("LayerNorm.weight", "LayerNorm.gamma")``: a key ending
            in ``current`` may be spelled with ``legacy`` instead.
    """

    optional_prefix: str = ""
    legacy_suffixes: tuple[tuple[str, str], ...] = ()

    def pattern(self) -> re.Pattern[str]:
        stem, endings = self.hf_key.removeprefix(self.optional_prefix), [""]
        for current, legacy in self.legacy_suffixes:
            if stem.endswith(current):
                stem, endings = stem[: -len(current)], [current, legacy]
                break
        body = re.escape(stem).replace(r"\{i\}", r"(?P<i>\d+)")
        prefix = f"(?:{re.escape(self.optional_prefix)})?" if self.optional_prefix else ""
        return re.compile(f"^{prefix}{body}(?:{'|'.join(re.escape(e) for e in endings)})$")


def match_keys(
    keys: list[str], rules: list[Rule], ignore: list[str]
) -> tuple[dict[str, tuple[Rule, int | None]], list[str]]:
    """Matches every checkpoint key to exactly one rule (or an ignore regex).

    Returns:
        ``(matched, unknown)``: ``matched[key] = (rule, layer or None)``; ``unknown`` lists keys no rule claims.

    Raises:
        ValueError: if a key matches two rules (a bug in a table).
    """
    compiled = [(rule, rule.pattern()) for rule in rules]
    ignored = [re.compile(p) for p in ignore]
    matched: dict[str, tuple[Rule, int | None]] = {}
    unknown = []
    for key in keys:
        hits = [(rule, m) for rule, m in ((r, p.match(key)) for r, p in compiled) if m]
        if len(hits) > 1:
            raise ValueError(f"checkpoint key {key!r} matches several rules: {[h[0].hf_key for h in hits]}")
        if hits:
            rule, m = hits[0]
            matched[key] = (rule, int(m.group("i")) if rule.stacked else None)
        elif not any(p.search(key) for p in ignored):
            unknown.append(key)
    return matched, unknown
