"""Mixtures of data sources: one role's examples drawn from several sources, e.g. the official TAR bio retain set
(pile-bio retain text plus half as many magpie-bio-filtered instructions).

A mixture is written ``a + b`` (every example of each source, in order) or with weights ``a*2 + b*1``: shares
2 : 1 of the mixed set, as many examples as the scarcest source allows, none repeated (the first examples of each
source are taken). The ``+`` needs spaces around it (paths may hold a ``+``).

Example:
    >>> parse_mixture("pile-bio-retain*2 + magpie-bio-filtered*1")
    [Component(source='pile-bio-retain', weight=2.0), Component(source='magpie-bio-filtered', weight=1.0)]
    >>> parse_mixture("toy:retain") is None  # a single source
    True
    >>> list(mix([list("aaaaaa"), list("bbbbbbbbbb")], [2.0, 1.0]))  # 6 a's allow 3 b's
    ['a', 'a', 'a', 'a', 'a', 'a', 'b', 'b', 'b']
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from jaxtar.data.examples import Examples
from jaxtar.errors import InputError

_SEPARATOR = re.compile(r"\s+\+\s+")
_WEIGHT = re.compile(r"^(?P<source>.+?)\s*\*\s*(?P<weight>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")


class Component(NamedTuple):
    """One source of a mixture and its weight (None: all of its examples, in an unweighted mixture)."""

    source: str
    weight: float | None


def parse_mixture(spec: str) -> list[Component] | None:
    """The components of a mixture spec, or None when ``spec`` names one source.

    Raises:
        InputError: an empty component, a non-positive weight, weights on some components but not all, or a source
            named twice.
    """
    parts = _SEPARATOR.split(spec)
    if len(parts) == 1 and _WEIGHT.match(parts[0]) is None:
        return None
    components = []
    for part in parts:
        match = _WEIGHT.match(part.strip())
        source, weight = (match["source"], float(match["weight"])) if match else (part.strip(), None)
        if not source:
            raise InputError(f"data source {spec!r}: an empty component (write 'a + b' or 'a*2 + b*1')")
        if weight is not None and not (weight > 0 and math.isfinite(weight)):
            raise InputError(f"data source {spec!r}: weights must be positive, got {weight}")
        components.append(Component(source, weight))
    weighted = [c.weight is not None for c in components]
    if any(weighted) and not all(weighted):
        raise InputError(f"data source {spec!r}: give every component a weight (a*2 + b*1) or none (a + b)")
    names = [c.source for c in components]
    if len(set(names)) != len(names):
        raise InputError(f"data source {spec!r} names a source twice")
    return components


def mixture_counts(sizes: Sequence[int], weights: Sequence[float | None]) -> list[int]:
    """How many examples each source contributes: all of them (no weights), else shares ``w / sum(w)`` of the
    largest mixture no source runs out of.

    Example:
        >>> mixture_counts([100, 30], [2.0, 1.0])
        [60, 30]
        >>> mixture_counts([100, 30], [None, None])
        [100, 30]
    """
    if all(w is None for w in weights):
        return list(sizes)
    total_weight = sum(weights)
    shares = [w / total_weight for w in weights]
    total = min(n / s for n, s in zip(sizes, shares, strict=True))
    counts = [min(n, int(math.floor(total * s + 1e-9))) for n, s in zip(sizes, shares, strict=True)]
    if min(counts) < 1:
        raise InputError(f"a mixture of {list(sizes)} examples with weights {list(weights)} leaves a source empty")
    return counts


def mix(examples: Sequence[Sequence[Any]], weights: Sequence[float | None]) -> Examples:
    """The mixed examples: the first ``mixture_counts`` examples of each source, sources in order (a view: nothing
    is read until indexed, `jaxtar.data.examples.Examples`)."""
    counts = mixture_counts([len(e) for e in examples], weights)
    return Examples.concat([Examples.of(items)[:n] for items, n in zip(examples, counts, strict=True)])
