"""Rows made on demand: a :class:`RowTable` tokenises an example the first time one of its rows is read, and a
:class:`TableRows` batch column reads only the rows under the index it is asked for.

Placed across processes (`jaxtar.parallel.put` fills each device's shard from ``column[shard_index]``), a batch of
`TableRows` makes each process tokenise only the rows of its own shards; on one device the whole batch is read.

Example:
    >>> table = RowTable.of_examples(["a", "bb", "ccc"], lambda texts: {"n": np.array([[len(t)] for t in texts])})
    >>> batch = gather([table], np.zeros(2, int), np.array([2, 0]))
    >>> batch["n"][1:].tolist(), table.made  # only row 0 is made: to learn the columns, then read
    ([[1]], 1)
    >>> np.asarray(batch["n"]).ravel().tolist(), table.made
    ([3, 1], 2)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxtar.data.examples import Examples

Batch = dict[str, np.ndarray]


class RowTable:
    """``num_rows`` fixed-shape rows, made by ``fetch(indices) -> {column: [len(indices), ...]}`` when first read.

    Args:
        num_rows: the number of rows.
        fetch: makes the rows at an int array of indices (e.g. tokenises those examples).
        cache: keep made rows (each row is fetched once); off for tables that only re-index another table.
    """

    def __init__(self, num_rows: int, fetch: Callable[[np.ndarray], Batch], *, cache: bool = True) -> None:
        if num_rows < 1:
            raise ValueError(f"a row table needs at least one row, got {num_rows}")
        self.num_rows = int(num_rows)
        self._fetch = fetch
        self._cache: dict[int, dict[str, np.ndarray]] | None = {} if cache else None
        first = self._read(np.zeros(1, np.int64))  # the columns' names, row shapes and dtypes
        self.columns = {name: (value.shape[1:], value.dtype) for name, value in first.items()}

    @classmethod
    def of_arrays(cls, arrays: Batch) -> RowTable:
        """A table over rows already made (arrays with one leading size)."""
        sizes = {len(v) for v in arrays.values()}
        if len(sizes) != 1:
            raise ValueError(f"all arrays need the same leading size, got {sizes}")
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        return cls(sizes.pop(), lambda idx: {k: v[idx] for k, v in arrays.items()}, cache=False)

    @classmethod
    def of_examples(cls, examples: Sequence[Any], encode: Callable[[list[Any]], Batch]) -> RowTable:
        """A table whose row ``i`` is ``encode([examples[i]])`` (made in groups: ``encode`` must treat each example
        on its own, as fixed-length tokenisation does)."""
        examples = Examples.of(examples)  # read together, one call per group of rows
        return cls(len(examples), lambda idx: encode(examples.take(idx)))

    @property
    def made(self) -> int:
        """How many distinct rows this table has made (fetched) so far."""
        return 0 if self._cache is None else len(self._cache)

    def subset(self, indices: np.ndarray) -> RowTable:
        """The table of rows ``indices`` of this one (made, and cached, by this one)."""
        indices = np.asarray(indices, np.int64)
        return RowTable(len(indices), lambda idx: self.rows(indices[idx]), cache=False)

    @staticmethod
    def concat(tables: Sequence[RowTable]) -> RowTable:
        """The rows of ``tables`` one after another (their columns must match)."""
        tables = list(tables)
        if len({tuple(sorted(t.columns)) for t in tables}) != 1:
            raise ValueError(f"tables with different columns: {[sorted(t.columns) for t in tables]}")
        offsets = np.cumsum([0] + [t.num_rows for t in tables])

        def fetch(idx: np.ndarray) -> Batch:
            which = np.searchsorted(offsets, idx, side="right") - 1
            return _assemble(tables, which, idx - offsets[which])

        return RowTable(int(offsets[-1]), fetch, cache=False)

    @staticmethod
    def join(tables: Sequence[RowTable]) -> RowTable:
        """Row ``i`` of every table side by side: the union of their columns (same row counts, distinct columns).

        Example:
            >>> a, b = RowTable.of_arrays({"x": np.arange(3)}), RowTable.of_arrays({"y": -np.arange(3)})
            >>> {k: v.tolist() for k, v in RowTable.join([a, b]).rows(np.array([2])).items()}
            {'x': [2], 'y': [-2]}
        """
        tables = list(tables)
        if len({t.num_rows for t in tables}) != 1:
            raise ValueError(f"tables with different row counts: {[t.num_rows for t in tables]}")
        names = [name for t in tables for name in t.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"tables share a column: {sorted(names)}")
        return RowTable(tables[0].num_rows, lambda idx: {k: v for t in tables for k, v in t.rows(idx).items()},
                        cache=False)  # fmt: skip

    def rows(self, indices: np.ndarray) -> Batch:
        """The rows at ``indices`` (any shape): ``{column: [*indices.shape, *row shape]}``."""
        indices = np.asarray(indices, np.int64)
        flat = self._read(indices.ravel())
        return {k: v.reshape(indices.shape + v.shape[1:]) for k, v in flat.items()}

    def all(self) -> Batch:
        """Every row (makes all of them)."""
        return self.rows(np.arange(self.num_rows))

    def _read(self, flat: np.ndarray) -> Batch:
        if flat.size and (flat.min() < 0 or flat.max() >= self.num_rows):
            raise IndexError(f"row index out of range for a table of {self.num_rows} rows")
        if self._cache is None:
            return self._fetch(flat)
        missing = np.array(sorted({int(i) for i in flat} - self._cache.keys()), np.int64)
        if missing.size:
            made = self._fetch(missing)
            self._cache.update({int(i): {k: v[j] for k, v in made.items()} for j, i in enumerate(missing)})
        rows = [self._cache[int(i)] for i in flat]
        if not rows:
            return {name: np.empty((0, *s), d) for name, (s, d) in self.columns.items()}
        return {name: np.stack([r[name] for r in rows]) for name in rows[0]}


def _assemble(tables: Sequence[RowTable], which: np.ndarray, index: np.ndarray) -> Batch:
    """Rows ``index[i]`` of tables ``which[i]`` (flat int arrays), in that order."""
    columns = tables[0].columns
    out = {name: np.empty((len(index), *shape), dtype) for name, (shape, dtype) in columns.items()}
    for t in np.unique(which):
        mask = which == t
        for name, value in tables[int(t)].rows(index[mask]).items():
            out[name][mask] = value
    return out


class TableRows:
    """One column of a batch whose rows come from tables: element ``[*lead, ...]`` is row ``index[lead]`` of table
    ``tables[which[lead]]``. Indexing it (``x[i]``, ``x[2:4, :, 1]``) makes only the rows it covers;
    ``np.asarray(x)`` makes all of them.

    Attributes:
        shape, dtype, ndim: those of the whole column, as for a numpy array.
    """

    def __init__(self, tables: Sequence[RowTable], which: np.ndarray, index: np.ndarray, column: str) -> None:
        self.tables, self.column = tuple(tables), column
        self.which, self.index = np.asarray(which, np.int64), np.asarray(index, np.int64)
        row_shape, self.dtype = tables[0].columns[column]
        self.shape = self.index.shape + tuple(row_shape)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def view(self, rows: slice | np.ndarray) -> TableRows:
        """The column at leading rows ``rows`` (a slice or an int array), still made on demand (nothing is read).

        Example:
            >>> t = RowTable.of_arrays({"x": np.arange(5)})
            >>> x = gather([t], np.zeros(5, int), np.arange(5))["x"]
            >>> np.asarray(x.view(slice(3, None))).tolist(), np.asarray(x.view(np.array([4, 0]))).tolist()
            ([3, 4], [4, 0])
        """
        return TableRows(self.tables, self.which[rows], self.index[rows], self.column)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        lead_dims = self.index.ndim
        if len(key) > self.ndim or not all(isinstance(k, (int, np.integer, slice)) for k in key):
            return np.asarray(self)[key]  # e.g. Ellipsis or fancy indexing: read everything
        lead, rest = key[:lead_dims], key[lead_dims:]
        which, index = self.which[lead], self.index[lead]
        flat = _assemble(self.tables, which.ravel(), index.ravel())[self.column]
        rows = flat.reshape(index.shape + flat.shape[1:])
        return rows[(slice(None),) * index.ndim + tuple(rest)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[()]
        return whole if dtype is None else whole.astype(dtype)

    def __repr__(self) -> str:
        return f"TableRows({self.column!r}, shape={self.shape}, dtype={self.dtype})"


def gather(tables: Sequence[RowTable], which: np.ndarray, index: np.ndarray) -> dict[str, TableRows]:
    """A lazy batch: for each column of the tables, rows ``index`` of tables ``which`` (int arrays of one shape)."""
    return {name: TableRows(tables, which, index, name) for name in tables[0].columns}


def materialise(tree: Any) -> Any:
    """``tree`` with every :class:`TableRows` leaf read into a numpy array (other leaves unchanged).

    Example:
        >>> t = RowTable.of_arrays({"x": np.arange(3)[:, None]})
        >>> materialise({"b": gather([t], np.zeros(2, int), np.array([2, 1]))})["b"]["x"].tolist()
        [[2], [1]]
    """
    if isinstance(tree, TableRows):
        return np.asarray(tree)
    if isinstance(tree, dict):
        return {k: materialise(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(materialise(v) for v in tree)
    return tree


def take_rows(column: Any, rows: np.ndarray | slice) -> Any:
    """``column[rows]`` along the leading axis, still made on demand for a :class:`TableRows` column (nothing read).

    Example:
        >>> x = gather([RowTable.of_arrays({"x": np.arange(5)})], np.zeros(5, int), np.arange(5))["x"]
        >>> take_rows(x, np.array([4, 0])), take_rows(np.arange(5), slice(3, None)).tolist()
        (TableRows('x', shape=(2,), dtype=int64), [3, 4])
    """
    return column.view(rows) if isinstance(column, TableRows) else np.asarray(column)[rows]


def text_key(example: Any) -> int:
    """A 64-bit content hash of an example (equal texts, equal keys), for splitting without keeping the texts.

    Example:
        >>> text_key("a") == text_key("a") != text_key("b")
        True
    """
    return int.from_bytes(hashlib.blake2b(str(example).encode(), digest_size=8).digest(), "little")


def split_keys(keys: Sequence[int] | np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of example indices into (rest, held-out ~``fraction``), both non-empty, given each example's
    content key (`text_key`): equal examples (duplicate texts) always land on the same side, so no held-out
    example is ever trained on.

    Raises:
        ValueError: fewer than 2 distinct keys.

    Example:
        >>> rest, held = split_keys([text_key(c) for c in "abcdefghij"], 0.2, seed=0)
        >>> len(rest), len(held), sorted(set(rest) | set(held)) == list(range(10))
        (8, 2, True)
        >>> rest, held = split_keys([text_key(c) for c in "xyxz"], 0.34, seed=1)
        >>> {0, 2} <= set(rest) or {0, 2} <= set(held)
        True
    """
    keys = np.asarray(keys, np.uint64)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))  # groups numbered by first occurrence
    group, n_groups = rank[inverse.reshape(-1)], len(first)
    if n_groups < 2:
        raise ValueError(f"need at least 2 distinct examples to hold some out, got {n_groups}")
    held = min(max(int(round(n_groups * fraction)), 1), n_groups - 1)
    held_groups = np.random.default_rng([seed, 12345]).permutation(n_groups)[:held]
    out = np.isin(group, held_groups)
    return np.flatnonzero(~out), np.flatnonzero(out)
