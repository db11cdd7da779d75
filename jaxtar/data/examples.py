"""Examples read on demand: an :class:`Examples` sequence reads example ``i`` (a text, a preference pair) from its
source only when it is indexed, so a process that tokenises only the rows of its own shards
(`jaxtar.data.rows.RowTable`) also reads only those examples from disk.

Slices, ``limit`` and mixtures (`concat`) are views: they read nothing until indexed.

Example:
    >>> texts = Examples(1000, lambda idx: [f"doc {i}" for i in idx])
    >>> head = Examples.concat([texts[:3], texts[500:502]])
    >>> list(head), texts.reads
    (['doc 0', 'doc 1', 'doc 2', 'doc 500', 'doc 501'], 5)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

_CHUNK = 1024  # examples read at once when iterating


class Examples(Sequence):
    """``length`` examples; ``read(indices) -> list`` reads the examples at an int array of indices.

    ``reads`` counts the examples read so far (this sequence and every view of it), for tests and diagnostics.
    Like other sequences that are not lists, it never equals a list: compare ``list(examples)``.
    """

    def __init__(self, length: int, read: Callable[[np.ndarray], list[Any]], *, _count: list[int] | None = None):
        self._length = int(length)
        self._read = read
        self._count = [0] if _count is None else _count

    @classmethod
    def of(cls, items: Sequence[Any]) -> Examples:
        """Examples already in memory (a list): ``of(items)[i] == items[i]``; an `Examples` is returned as is."""
        if isinstance(items, Examples):
            return items
        items = list(items)
        return cls(len(items), lambda idx: [items[i] for i in idx])

    @property
    def reads(self) -> int:
        """How many examples were read through this sequence and its views."""
        return self._count[0]

    def take(self, indices: Sequence[int] | np.ndarray) -> list[Any]:
        """The examples at ``indices`` (read together)."""
        indices = self._checked(indices)
        self._count[0] += int(indices.size)
        return list(self._read(indices)) if indices.size else []

    def view(self, indices: Sequence[int] | np.ndarray) -> Examples:
        """The examples at ``indices``, as a view (nothing is read)."""
        indices = self._checked(indices)
        return Examples(len(indices), lambda idx: self._read(indices[idx]), _count=self._count)

    def _checked(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= self._length):
            raise IndexError(f"example index out of range for {self._length} examples")
        return indices

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, key: int | slice) -> Any:
        if isinstance(key, slice):
            return self.view(np.arange(self._length)[key])
        i = int(key) + (self._length if int(key) < 0 else 0)
        return self.take([i])[0]

    def __iter__(self) -> Iterator[Any]:
        for start in range(0, self._length, _CHUNK):
            yield from self.take(np.arange(start, min(start + _CHUNK, self._length)))

    @staticmethod
    def concat(parts: Sequence[Sequence[Any]]) -> Examples:
        """The examples of ``parts`` one after another (each an `Examples` or a list), as a view."""
        parts = [Examples.of(p) for p in parts]
        offsets = np.cumsum([0] + [len(p) for p in parts])

        def read(idx: np.ndarray) -> list[Any]:
            which = np.searchsorted(offsets, idx, side="right") - 1
            out: list[Any] = [None] * len(idx)
            for w in np.unique(which):
                at = np.flatnonzero(which == w)
                for pos, item in zip(at, parts[w].take(idx[at] - offsets[w]), strict=True):
                    out[pos] = item
            return out

        return Examples(int(offsets[-1]), read)

    def __repr__(self) -> str:
        return f"Examples({self._length} examples, {self.reads} read)"
