"""Stateless batch streams: the rows at stream positions ``[p, p + n)`` are a function of (seed, stream id, p).

Each stream walks its rows in epochs, each epoch a permutation fixed by ``(seed, stream id, epoch)``; a defence step
reads the positions its step number implies, so nothing depends on the history of the process (resume-safe).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jaxtar.data.batching import BatchIterator


@dataclass(frozen=True)
class Rows:
    """A dict of equally long row arrays."""

    rows: dict[str, np.ndarray]

    def __getitem__(self, key: str) -> np.ndarray:
        return self.rows[key]

    def reshape_leading(self, *shape: int) -> dict[str, np.ndarray]:
        """Splits the leading axis into ``shape`` (e.g. ``[K * B, T] -> [K, B, T]``)."""
        return {k: v.reshape(shape + v.shape[1:]) for k, v in self.rows.items()}


def _stream_seed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


class RowStream:
    """Infinite reshuffled rows of ``data``; :meth:`take` is a pure function of its arguments.

    Example:
        >>> s = RowStream({"x": np.arange(5)}, seed=0, stream=1)
        >>> np.array_equal(s.take(3, 4)["x"], RowStream({"x": np.arange(5)}, 0, 1).take(3, 4)["x"])
        True
    """

    def __init__(self, data: dict[str, np.ndarray], seed: int, stream: int) -> None:
        self._iterator = BatchIterator(data, batch_size=1, seed=_stream_seed(seed, stream))
        self.num_rows = self._iterator.num_examples

    @property
    def rows(self) -> dict[str, np.ndarray]:
        """Every row of the stream (in the order given)."""
        return self._iterator.data

    def take(self, position: int, count: int) -> Rows:
        """Rows at stream positions ``position .. position + count - 1``."""
        idx = self._iterator.indices(position, count)
        return Rows({k: v[idx] for k, v in self._iterator.data.items()})


def tokens_in(rows: int, length: int) -> int:
    """Token positions in ``rows`` rows of ``length``."""
    return int(rows) * int(length)
