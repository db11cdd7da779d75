"""Rows made on demand (`jaxtar.data.rows`): a lazy batch reads exactly the rows under an index, agrees with the
same rows made up front, and placed on a mesh equals the eager batch; the held-out split is decided on the texts."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxtar.data.rows import RowTable, TableRows, gather, materialise, split_keys, text_key
from jaxtar.parallel import make_mesh, put

TEXTS = [f"text {i}" for i in range(20)]


def _encode(calls: list[list[str]]):
    def encode(texts):
        calls.append(list(texts))
        ids = np.array([[int(t.split()[1]), len(t), 7] for t in texts], np.int32)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    return encode


def test_a_table_makes_each_row_once_and_only_when_read():
    calls: list[list[str]] = []
    table = RowTable.of_examples(TEXTS, _encode(calls))
    assert calls == [["text 0"]] and table.made == 1  # the columns are learnt from row 0
    rows = table.rows(np.array([[3, 5], [5, 0]]))
    assert rows["input_ids"].shape == (2, 2, 3) and rows["input_ids"][:, :, 0].tolist() == [[3, 5], [5, 0]]
    assert calls[1:] == [["text 3", "text 5"]] and table.made == 3  # 5 is made once, 0 was made already
    table.rows(np.array([5, 3, 0]))
    assert len(calls) == 2  # nothing new to make
    assert table.all()["input_ids"][:, 0].tolist() == list(range(20)) and table.made == 20


def test_subset_and_concat_read_through_to_their_tables():
    calls: list[list[str]] = []
    base = RowTable.of_examples(TEXTS, _encode(calls))
    odd, even = base.subset(np.arange(1, 20, 2)), base.subset(np.arange(0, 20, 2))
    both = RowTable.concat([odd, even])
    assert both.num_rows == 20
    assert both.rows(np.array([0, 10, 19]))["input_ids"][:, 0].tolist() == [1, 0, 18]
    assert base.made == 3  # rows 0, 1 (the columns of each), 18: the subsets and the concatenation cache nothing
    with pytest.raises(IndexError):
        both.rows(np.array([20]))
    other = RowTable.of_arrays({"input_ids": np.zeros((2, 3), np.int32)})
    with pytest.raises(ValueError, match="different columns"):
        RowTable.concat([both, other])


@pytest.mark.parametrize(
    "key",
    [(), 1, -1, (slice(1, 3),), (slice(None), 2), (0, slice(1, None), 1), (slice(None, None, 2), 1, 2),
     (Ellipsis, 0), (np.array([1, 0]),)],
)  # fmt: skip
def test_table_rows_index_like_the_numpy_array_and_read_only_what_they_cover(key):
    calls: list[list[str]] = []
    tables = [RowTable.of_examples(TEXTS[:10], _encode(calls)), RowTable.of_examples(TEXTS[10:], _encode(calls))]
    rng = np.random.default_rng(0)
    which, index = rng.integers(0, 2, (3, 4)), rng.integers(0, 10, (3, 4))
    column = gather(tables, which, index)["input_ids"]
    assert isinstance(column, TableRows) and column.shape == (3, 4, 3) and column.ndim == 3 and len(column) == 3
    want = np.stack([tables[w].all()["input_ids"][i] for w, i in zip(which.ravel(), index.ravel())]).reshape(3, 4, 3)
    made_before = [t.made for t in tables]
    fresh = [RowTable.of_examples(TEXTS[:10], _encode([])), RowTable.of_examples(TEXTS[10:], _encode([]))]
    lazy = gather(fresh, which, index)["input_ids"]
    np.testing.assert_array_equal(lazy[key], want[key])
    plain = all(isinstance(k, (int, slice)) for k in (key if isinstance(key, tuple) else (key,)))
    if plain:  # ints and slices: only the rows under the key's leading (row-choosing) part are made
        under = np.zeros(which.shape, bool)
        under[(key if isinstance(key, tuple) else (key,))[:2]] = True
        covered = set(zip(which[under].tolist(), index[under].tolist()))
        assert sum(t.made for t in fresh) == len(covered | {(0, 0), (1, 0)})  # + row 0 of each, for its columns
    assert made_before == [t.made for t in tables]
    np.testing.assert_array_equal(np.asarray(column), want)


def test_materialise_reads_the_lazy_leaves_of_a_tree():
    table = RowTable.of_arrays({"x": np.arange(6).reshape(3, 2)})
    tree = {"a": gather([table], np.zeros(2, int), np.array([2, 0])), "b": [np.ones(1), 3]}
    out = materialise(tree)
    assert out["a"]["x"].tolist() == [[4, 5], [0, 1]] and out["b"][1] == 3 and isinstance(out["a"]["x"], np.ndarray)


def test_a_lazy_batch_placed_on_a_mesh_equals_the_eager_one():
    mesh = make_mesh(len(jax.devices()), 1, 1)
    calls: list[list[str]] = []
    table = RowTable.of_examples(TEXTS, _encode(calls))
    batch = gather([table], np.zeros((2, 4), int), np.arange(8).reshape(2, 4))
    placed = put(batch["input_ids"], NamedSharding(mesh, P(None, ("data",))))
    np.testing.assert_array_equal(np.asarray(placed), table.rows(np.arange(8).reshape(2, 4))["input_ids"])


def test_the_split_keeps_equal_texts_together_and_is_seeded():
    texts = [f"t{i % 30}" for i in range(60)]  # every text twice
    split = lambda xs, fraction, seed: split_keys([text_key(x) for x in xs], fraction, seed)  # noqa: E731
    rest, held = split(texts, 0.2, seed=3)
    assert sorted(np.concatenate([rest, held]).tolist()) == list(range(60))
    held_texts = {texts[i] for i in held}
    assert len(held_texts) == 6 and not held_texts & {texts[i] for i in rest}
    again = split(texts, 0.2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(again, (rest, held)))
    assert not np.array_equal(split(texts, 0.2, seed=4)[1], held)
    assert len(split(["a", "b"], 0.9, 0)[0]) == 1  # both sides non-empty
    with pytest.raises(ValueError, match="2 distinct"):
        split(["a", "a"], 0.2, 0)
    # groups are numbered by first occurrence, so the split does not depend on the hash values: the toy world's
    # split is the one made before the keys (on the texts themselves), pinned here by its first held-out indices
    from jaxtar.toy import toy_world

    forget = toy_world(0).forget_texts
    held = split(forget, 0.2, seed=0)[1]
    assert len(held) == 152 and held[:5].tolist() == [30, 31, 43, 47, 56]
