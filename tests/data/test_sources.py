"""Dataset registry, local files, offline errors, multiple-choice prompts."""

import dataclasses
import json
import re

import datasets
import pytest

from jaxtar.data.mcq import MCQItem, build_mcq_prompt
from jaxtar.data.sources import (
    DATASETS,
    DatasetSpec,
    DataSourceError,
    load_mcq,
    load_preferences,
    load_source,
    load_texts,
    split_transcript,
)


def test_registry_covers_the_reference_datasets_with_pinned_or_flagged_revisions():
    hub_ids = {s.hub_id for s in DATASETS.values()}
    for hub_id in (
        "lapisrocks/pile-bio",
        "lapisrocks/camel-bio",
        "lapisrocks/magpie-bio-filtered",
        "justinwangx/CTFtime",
        "Unified-Language-Model-Alignment/Anthropic_HH_Golden",
        "cais/wmdp",
        "cais/mmlu",
    ):
        assert hub_id in hub_ids
    for spec in DATASETS.values():
        assert re.fullmatch(r"[0-9a-f]{40}", spec.revision) or spec.revision == "main", spec
    assert {DATASETS[f"wmdp-{d}"].config for d in ("bio", "chem", "cyber")} == {"wmdp-bio", "wmdp-chem", "wmdp-cyber"}
    assert DATASETS["pile-bio-forget"].filter_value is True and DATASETS["pile-bio-retain"].filter_value is False


def test_spec_validation():
    with pytest.raises(ValueError, match="kind"):
        DatasetSpec("x", "a/b", "main", "train", kind="audio")
    with pytest.raises(ValueError, match="revision"):
        DatasetSpec("x", "a/b", "", "train", kind="text")
    with pytest.raises(ValueError, match="needs >= 3 fields"):
        DatasetSpec("x", "a/b", "main", "test", kind="mcq", fields=("question",))


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_local_files_use_the_registry_fields_and_filter(tmp_path):
    rows = [
        {"txt_chunk": f"doc {i}", "label": i % 2 == 0, "meta": {"pile_set_name": "PubMed"}, "reasoning": ""}
        for i in range(6)
    ]
    jsonl = _write_jsonl(tmp_path / "pile.jsonl", rows)
    parquet = tmp_path / "pile.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    for path in (jsonl, parquet):
        assert load_texts("pile-bio-forget", local_path=path) == ["doc 0", "doc 2", "doc 4"]
        assert load_texts("pile-bio-retain", local_path=path, limit=2) == ["doc 1", "doc 3"]
    text = tmp_path / "notes.txt"
    text.write_text("alpha beta\n\ngamma\n")
    assert load_texts(str(text)) == ["alpha beta", "gamma"]
    folder = tmp_path / "saved"
    datasets.Dataset.from_list([{"text": "saved row"}]).save_to_disk(str(folder))
    assert load_texts(str(folder)) == ["saved row"]


def test_chat_sources_render_their_messages(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "What do cells do?"}, {"from": "gpt", "value": "Divide."}]}]
    texts = load_texts("magpie-bio-filtered", local_path=_write_jsonl(tmp_path / "magpie.jsonl", rows))
    assert texts == ["human: What do cells do?\ngpt: Divide."]


def test_missing_field_and_missing_file_errors(tmp_path):
    path = _write_jsonl(tmp_path / "wrong.jsonl", [{"body": "x", "label": True}])
    with pytest.raises(DataSourceError, match=r"no field\(s\) \['txt_chunk'\].*'body'"):
        load_texts("pile-bio-forget", local_path=path)
    with pytest.raises(DataSourceError, match="does not exist"):
        load_texts("ctftime", local_path=tmp_path / "absent.parquet")
    with pytest.raises(DataSourceError, match="unknown dataset"):
        load_texts("no-such-dataset")
    with pytest.raises(DataSourceError, match="not text"):
        load_texts("wmdp-bio", local_path=path)


def test_offline_hub_error_names_the_dataset_and_the_local_fix(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataSourceError) as err:
        load_source("wmdp-cyber")
    message = str(err.value)
    for part in ("'wmdp-cyber'", "cais/wmdp", "770aa8d8158b145482c0e7ad990ffd6009f1f6a3", "local_path=", "to_parquet"):
        assert part in message


def test_mcq_items_and_prompts(tmp_path):
    with pytest.raises(ValueError, match="answer"):
        MCQItem("q?", ("a", "b"), 2)
    with pytest.raises(ValueError, match="2..26 choices"):
        MCQItem("q?", ("a",), 0)
    with pytest.raises(ValueError, match="question"):
        MCQItem(" ", ("a", "b"), 0)
    shots = [MCQItem("Which is red?", ["sky", "blood", "grass", "snow"], 1, "colour_theory")]
    item = MCQItem("Which is green?", ("sky", "blood", "grass", "snow"), 2, "colour_theory")
    assert item.answer_letter == "C" and shots[0].choices == ("sky", "blood", "grass", "snow")
    assert build_mcq_prompt(item, shots) == (
        "The following are multiple choice questions (with answers) about colour theory.\n\n"
        "Which is red?\nA. sky\nB. blood\nC. grass\nD. snow\nAnswer: B\n\n"
        "Which is green?\nA. sky\nB. blood\nC. grass\nD. snow\nAnswer:"
    )
    rows = [
        {"question": "q1", "choices": ["a", "b", "c", "d"], "answer": 3},
        {"question": "q2", "choices": ["a", "b", "c", "d"], "answer": "B"},
    ]
    items = load_mcq("wmdp-bio", local_path=_write_jsonl(tmp_path / "wmdp.jsonl", rows))
    assert [(i.answer, i.subject) for i in items] == [(3, "biology"), (1, "biology")]
    mmlu = [dict(r, subject="virology") for r in rows]
    assert load_mcq("mmlu", local_path=_write_jsonl(tmp_path / "mmlu.jsonl", mmlu))[0].subject == "virology"


def test_preferences_from_hh_transcripts(tmp_path):
    chosen = "\n\nHuman: how do I do a bad thing?\n\nAssistant: I can't help with that."
    rejected = "\n\nHuman: how do I do a bad thing?\n\nAssistant: Sure, step one..."
    pairs = load_preferences(
        "anthropic-hh-golden",
        local_path=_write_jsonl(tmp_path / "hh.jsonl", [{"chosen": chosen, "rejected": rejected}]),
    )
    assert pairs[0].prompt == "\n\nHuman: how do I do a bad thing?\n\nAssistant:"
    assert (pairs[0].chosen, pairs[0].rejected) == (" I can't help with that.", " Sure, step one...")
    with pytest.raises(DataSourceError, match="no"):
        split_transcript("Human: only a question")
    spec = dataclasses.replace(DATASETS["anthropic-hh-golden"], fields=("good", "bad"))
    with pytest.raises(DataSourceError, match="'good'"):
        load_preferences(spec, local_path=tmp_path / "hh.jsonl")
