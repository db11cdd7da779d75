"""Examples read on demand (`jaxtar.data.examples`, `jaxtar.data.sources.text_examples`): views read nothing, an
index reads exactly its examples (what a TAR run reads from a
file: tests/defenses/test_tar_faithful.py)."""

from __future__ import annotations

import json

import pytest

from jaxtar.data.examples import Examples
from jaxtar.data.sources import DataSourceError, load_preferences, load_texts, preference_examples, text_examples


def _counted(n: int, log: list[int]) -> Examples:
    def read(idx):
        log.extend(int(i) for i in idx)
        return [f"doc {i}" for i in idx]

    return Examples(n, read)


def test_views_read_nothing_and_an_index_reads_exactly_its_examples():
    log: list[int] = []
    docs = _counted(100, log)
    tail, every_third = docs[90:], docs[::3]
    both = Examples.concat([tail, ["x", "y"], every_third[:2]])
    assert log == [] and len(tail) == 10 and len(every_third) == 34 and len(both) == 14
    assert both[11] == "y" and log == []  # from the in-memory list
    assert both[-1] == "doc 3" and tail[-1] == "doc 99" and log == [3, 99]
    assert both.take([0, 12, 1]) == ["doc 90", "doc 0", "doc 91"] and log[2:] == [90, 91, 0]
    assert docs.reads == 5  # every read through a view counts on the sequence it views
    assert list(every_third)[:3] == ["doc 0", "doc 3", "doc 6"] and docs.reads == 5 + 34
    with pytest.raises(IndexError):
        tail[10]
    with pytest.raises(IndexError):
        both.take([14])


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_file_source_is_read_row_by_row_with_its_filter_and_without_empty_rows(tmp_path):
    rows = [{"txt_chunk": f"doc {i}" if i % 7 else "  ", "label": bool(i % 2)} for i in range(400)]
    path = _jsonl(tmp_path / "pile.jsonl", rows)
    texts = text_examples("pile-bio-forget", local_path=path)  # label 1, non-empty
    expected = [r["txt_chunk"] for r in rows if r["label"] and r["txt_chunk"].strip()]
    assert len(texts) == len(expected) and texts.reads == 0
    assert texts[5] == expected[5] and texts.take([50, 2]) == [expected[50], expected[2]] and texts.reads == 3
    assert load_texts("pile-bio-forget", local_path=path) == expected
    pairs = [{"chosen": f"\n\nHuman: q{i}\n\nAssistant: no", "rejected": f"\n\nHuman: q{i}\n\nAssistant: yes"}
             for i in range(30)]  # fmt: skip
    path = _jsonl(tmp_path / "hh.jsonl", pairs)
    lazy = preference_examples("anthropic-hh-golden", local_path=path)
    assert lazy[7].prompt.endswith("q7\n\nAssistant:") and lazy.reads == 1
    assert load_preferences("anthropic-hh-golden", local_path=path)[7] == lazy[7]


def test_rows_empty_after_strip_are_dropped_and_pairs_without_a_turn_are_refused_up_front(tmp_path):
    rows = [{"text": "a"}, {"text": "\u3000\xa0 \v"}, {"text": None}, {"text": " b "}]
    assert load_texts(str(_jsonl(tmp_path / "notes.jsonl", rows))) == ["a", " b "]  # as str.strip() judges
    good = {"chosen": "\n\nHuman: q\n\nAssistant: no", "rejected": "\n\nHuman: q\n\nAssistant: yes"}
    path = _jsonl(tmp_path / "hh.jsonl", [good, good, {**good, "rejected": "Human: q only"}])
    with pytest.raises(DataSourceError, match="'rejected' transcript of row 2 has no"):
        preference_examples("anthropic-hh-golden", local_path=path)  # refused before any pair is read
