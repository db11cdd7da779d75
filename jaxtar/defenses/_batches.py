"""Stateless batch streams: the rows at stream positions ``[p, p + n)`` are a function of (seed, stream id, p).

Each stream walks the rows of a `RowTable` in epochs, each epoch a permutation fixed by ``(seed, stream id,
epoch)``; a defence step reads the positions its step number implies, so nothing depends on the history of the
process (resume-safe). Rows are made (tokenised) only when read: a step's batch placed across processes makes each
process tokenise only the rows of its own shards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jaxtar.data.batching import BatchIterator
from jaxtar.data.rows import RowTable, TableRows, gather


@dataclass(frozen=True)
class Rows:
    """The rows at some stream positions: read lazily (``lazy``) or made now (``rows``, ``rows[key]``)."""

    table: RowTable
    indices: np.ndarray

    def __getitem__(self, key: str) -> np.ndarray:
        return self.rows[key]

    @property
    def rows(self) -> dict[str, np.ndarray]:
        """The rows as numpy arrays (made now)."""
        return self.table.rows(self.indices)

    def reshape_leading(self, *shape: int) -> dict[str, np.ndarray]:
        """The rows (made now) with the leading axis split into ``shape`` (e.g. ``[K * B, T] -> [K, B, T]``)."""
        return self.table.rows(self.indices.reshape(shape))

    @property
    def lazy(self) -> dict[str, TableRows]:
        """The rows as a lazy batch (made when, and where, they are read)."""
        return gather([self.table], np.zeros_like(self.indices), self.indices)


def _stream_seed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


class RowStream:
    """Infinite reshuffled rows of ``table`` (or of arrays); :meth:`take` is a pure function of its arguments.

    Example:
        >>> s = RowStream({"x": np.arange(5)}, seed=0, stream=1)
        >>> np.array_equal(s.take(3, 4)["x"], RowStream({"x": np.arange(5)}, 0, 1).take(3, 4)["x"])
        True
    """

    def __init__(self, table: RowTable | dict[str, np.ndarray], seed: int, stream: int) -> None:
        self.table = table if isinstance(table, RowTable) else RowTable.of_arrays(table)
        self.num_rows = self.table.num_rows
        order = {"row": np.arange(self.num_rows)}  # BatchIterator's epoch order over the table's rows
        self._order = BatchIterator(order, batch_size=1, seed=_stream_seed(seed, stream))

    @property
    def rows(self) -> dict[str, np.ndarray]:
        """Every row of the stream, in table order (makes all of them)."""
        return self.table.all()

    def indices(self, position: int, count: int) -> np.ndarray:
        """Table rows at stream positions ``position .. position + count - 1``."""
        return self._order.indices(position, count)

    def take(self, position: int, count: int) -> Rows:
        """Rows at stream positions ``position .. position + count - 1``."""
        return Rows(self.table, self.indices(position, count))


def tokens_in(rows: int, length: int) -> int:
    """Token positions in ``rows`` rows of ``length``."""
    return int(rows) * int(length)
