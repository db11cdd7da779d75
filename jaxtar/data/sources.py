"""Where data comes from: a registry of Hub datasets with pinned revisions, and local files (multiple-choice items:
`jaxtar.data.mcq`).

Every dataset jaxtar loads by name (docs/datasets.md) has a :class:`DatasetSpec` in :data:`DATASETS` (hub id, pinned
revision, config, split, fields). The same spec applies to a local copy: ``load_texts("pile-bio-forget",
local_path="pile.parquet")`` reads the file (jsonl / json / parquet / csv / txt, a folder of them, or a ``save_to_disk``
folder) and applies the spec's fields and label filter. A plain path is a source too: ``load_texts("notes.txt")``.

Not registered: the out-of-distribution hazardous-text set of TAR's red team (the red-team suites' ``ood`` role).
No public copy of it is known (the official code ships no loader for one); give a local file with a ``text`` column
(`jaxtar.eval.redteam_inputs.RedTeamData.from_sources`, role ``ood``). magpie-bio-filtered is *benign* instruction
data (part of the official retain set), not out-of-distribution hazardous text.

Example:
    >>> spec = DATASETS["wmdp-bio"]
    >>> spec.hub_id, spec.config, spec.split
    ('cais/wmdp', 'wmdp-bio', 'test')
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from pyarrow import types as pa_types

from jaxtar.data.examples import Examples
from jaxtar.data.mcq import MCQ_LETTERS, MCQItem
from jaxtar.errors import DataSourceError

KINDS = ("text", "chat", "mcq", "preference")
_LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}

# MMLU subjects excluded from the retain score when the forget domain is biology / cyber
# (docs/datasets.md#mmlu-subjects).
MMLU_BIO_SUBJECTS = (
    "college_biology",
    "high_school_biology",
    "medical_genetics",
    "virology",
    "college_medicine",
    "anatomy",
    "clinical_knowledge",
)
MMLU_CYBER_SUBJECTS = ("computer_security",)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One dataset: where it lives and which fields hold what.

    Attributes:
        name: registry key.
        hub_id: Hugging Face Hub dataset id (``""`` for local-only sources).
        revision: pinned commit sha (or ``"main"`` where no sha is pinned yet).
        split: split to read.
        kind: ``text`` (fields joined), ``chat`` (a list of messages), ``mcq`` (question/choices/answer) or
            ``preference`` (chosen/rejected transcripts).
        config: dataset config name, if any.
        fields: the fields read: text fields for ``text``/``chat``; ``(question, choices, answer[, subject])`` for
            ``mcq``; ``(chosen, rejected)`` for ``preference``.
        filter_field: keep only rows where this field equals ``filter_value`` (e.g. pile-bio's ``label``).
        filter_value: see ``filter_field``.
        subject: default subject of mcq items (WMDP has no subject column).
    """

    name: str
    hub_id: str
    revision: str
    split: str
    kind: str
    config: str | None = None
    fields: tuple[str, ...] = ("text",)
    filter_field: str | None = None
    filter_value: Any = None
    subject: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("DatasetSpec.name must be non-empty")
        if self.kind not in KINDS:
            raise ValueError(f"DatasetSpec {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if not self.split:
            raise ValueError(f"DatasetSpec {self.name!r}: split must be non-empty")
        if self.hub_id and not self.revision:
            raise ValueError(f"DatasetSpec {self.name!r}: a Hub dataset needs a revision (a commit sha or 'main')")
        object.__setattr__(self, "fields", tuple(self.fields))
        needed = {"text": 1, "chat": 1, "mcq": 3, "preference": 2}[self.kind]
        if len(self.fields) < needed:
            raise ValueError(
                f"DatasetSpec {self.name!r}: kind {self.kind!r} needs >= {needed} fields, got {self.fields}"
            )


_PILE_BIO = dict(hub_id="lapisrocks/pile-bio", revision="89b6a69b0bc56ce0ab55c300512aa475c4142ba3", split="train")
_WMDP = dict(hub_id="cais/wmdp", revision="770aa8d8158b145482c0e7ad990ffd6009f1f6a3", split="test", kind="mcq")
_MMLU = dict(hub_id="cais/mmlu", revision="c30699e8356da336a370243923dbaf21066bb9fe", config="all", kind="mcq")
_MCQ_FIELDS = ("question", "choices", "answer")

# fmt: off
DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        # The official code loads the same data as "lapisrocks/biology-pile-labeled"; label True = forget.
        DatasetSpec("pile-bio-forget", kind="text", fields=("txt_chunk",), filter_field="label", filter_value=True,
                    **_PILE_BIO),
        DatasetSpec("pile-bio-retain", kind="text", fields=("txt_chunk",), filter_field="label", filter_value=False,
                    **_PILE_BIO),
        # The official loader (modules/dataloaders.py `get_camel_ai_datasets`, since commit 6b76bf5 of 2024-08-07)
        # reads `text_chunk` from this Hub dataset; `camel_ai_message_2_text_chunk` was the column of the private
        # CSV its first commit read. TODO(pin): the Hub page shows only the short sha 89c97e1 of the data commit
        # ("Upload dataset", 2024-08-06; 8fcb7de before it holds no data), and no full sha was found offline.
        DatasetSpec("camel-bio", hub_id="lapisrocks/camel-bio", revision="main", split="train", kind="text",
                    fields=("text_chunk",)),
        # Benign instruction data: the official code mixes it into its *retain* set (bio and cyber) and uses it for
        # the refusal setting's SFT; messages are {"from": "human" | "gpt", "value": ...} (`get_magpie_datasets`).
        # c9a4163 = "Upload dataset" (2024-10-08), the head of main.
        DatasetSpec("magpie-bio-filtered", hub_id="lapisrocks/magpie-bio-filtered",
                    revision="c9a4163ec62425f841b39e487cf2e13a3648dcd1", split="train", kind="chat",
                    fields=("conversations",)),
        DatasetSpec("ctftime", hub_id="justinwangx/CTFtime", revision="041a7744e2716c6a1c59f7bc66a23c32973b1d82",
                    split="train", kind="text", fields=("text_chunk",)),
        # TODO(pin): the Hub page shows only the short sha 6bfa1c8 ("Update README.md", head of main); no full sha
        # was found offline.
        DatasetSpec("anthropic-hh-golden", hub_id="Unified-Language-Model-Alignment/Anthropic_HH_Golden",
                    revision="main", split="train", kind="preference", fields=("chosen", "rejected")),
        DatasetSpec("wmdp-bio", config="wmdp-bio", fields=_MCQ_FIELDS, subject="biology", **_WMDP),
        DatasetSpec("wmdp-chem", config="wmdp-chem", fields=_MCQ_FIELDS, subject="chemistry", **_WMDP),
        DatasetSpec("wmdp-cyber", config="wmdp-cyber", fields=_MCQ_FIELDS, subject="computer security", **_WMDP),
        DatasetSpec("mmlu", split="test", fields=_MCQ_FIELDS + ("subject",), **_MMLU),
        DatasetSpec("mmlu-dev", split="dev", fields=_MCQ_FIELDS + ("subject",), **_MMLU),  # the 5-shot examples
    )
}
# fmt: on


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    """A prompt with a preferred (``chosen``) and a dispreferred (``rejected``) response."""

    prompt: str
    chosen: str
    rejected: str


def resolve_source(source: str | Path | DatasetSpec) -> DatasetSpec:
    """A registry name, a spec, or a local path (a ``text`` source reading the ``text`` field).

    Example:
        >>> resolve_source("ctftime").hub_id
        'justinwangx/CTFtime'
    """
    if isinstance(source, DatasetSpec):
        return source
    if isinstance(source, str) and source in DATASETS:
        return DATASETS[source]
    path = Path(source)
    if path.exists() or path.suffix in _LOCAL_BUILDERS:
        return DatasetSpec(name=str(path), hub_id="", revision="", split="train", kind="text")
    raise DataSourceError(
        f"unknown dataset {str(source)!r}: not a registered name ({sorted(DATASETS)}) nor an existing path"
    )


def _load_local(path: Path, spec: DatasetSpec, cache_dir: str | None):
    import datasets

    if not path.exists():
        raise DataSourceError(f"dataset {spec.name!r}: local path {str(path)!r} does not exist")
    if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        return loaded[spec.split] if isinstance(loaded, datasets.DatasetDict) else loaded
    files = sorted(p for p in path.rglob("*") if p.suffix in _LOCAL_BUILDERS) if path.is_dir() else [path]
    builders = {_LOCAL_BUILDERS.get(p.suffix) for p in files}
    if not files or None in builders or len(builders) != 1:
        raise DataSourceError(
            f"dataset {spec.name!r}: {str(path)!r} must be one kind of {sorted(_LOCAL_BUILDERS)} files "
            "(or a datasets.save_to_disk folder)"
        )
    kwargs = {"sample_by": "line"} if builders == {"text"} else {}
    return datasets.load_dataset(
        builders.pop(), data_files=[str(p) for p in files], split="train", cache_dir=cache_dir, **kwargs
    )


def _load_hub(spec: DatasetSpec, cache_dir: str | None):
    import datasets

    try:
        return datasets.load_dataset(
            spec.hub_id, spec.config, split=spec.split, revision=spec.revision, cache_dir=cache_dir
        )
    except Exception as err:  # offline, gated, renamed, bad revision: all end here with one clear message
        config = f", config {spec.config!r}" if spec.config else ""
        raise DataSourceError(
            f"could not load dataset {spec.name!r} (Hub id {spec.hub_id!r}{config}, split {spec.split!r}, "
            f"revision {spec.revision!r}): {type(err).__name__}: {err}\n"
            "If this machine is offline, fetch it where the Hub is reachable, e.g.\n"
            f"  datasets.load_dataset({spec.hub_id!r}, {spec.config!r}, split={spec.split!r}, "
            f"revision={spec.revision!r}).to_parquet('{spec.name}.parquet')\n"
            f"and pass local_path='{spec.name}.parquet' (jsonl, parquet, csv, txt or a save_to_disk folder work). "
            "Gated datasets also need `huggingface-cli login`."
        ) from err


def load_source(
    source: str | Path | DatasetSpec,
    *,
    local_path: str | Path | None = None,
    cache_dir: str | None = None,
    limit: int | None = None,
):
    """Loads a source as a ``datasets.Dataset``: filtered by the spec's label filter, fields checked.

    Args:
        source: a registry name (:data:`DATASETS`), a :class:`DatasetSpec`, or a local path.
        local_path: read this file/folder instead of the Hub, with ``source``'s fields and filter.
        cache_dir: ``datasets`` cache folder.
        limit: keep only the first ``limit`` rows (after filtering).

    Raises:
        DataSourceError: the data cannot be loaded (the message says how to provide it locally) or a field is
            missing (the message lists the fields present).
    """
    spec = resolve_source(source)
    if local_path is not None:
        dataset = _load_local(Path(local_path), spec, cache_dir)
    elif not spec.hub_id:
        dataset = _load_local(Path(spec.name), spec, cache_dir)
    else:
        dataset = _load_hub(spec, cache_dir)
    required = list(spec.fields[:3] if spec.kind == "mcq" else spec.fields)
    if spec.filter_field is not None:
        required.append(spec.filter_field)
    missing = [f for f in required if f not in dataset.column_names]
    if missing:
        raise DataSourceError(
            f"dataset {spec.name!r} has no field(s) {missing}; its fields are {dataset.column_names}. "
            "Use a DatasetSpec with matching `fields` (e.g. dataclasses.replace(spec, fields=(...)))."
        )
    if spec.filter_field is not None:
        dataset = dataset.filter(lambda v: v == spec.filter_value, input_columns=spec.filter_field)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset


def _render_message_list(value: Any) -> str:
    if isinstance(value, str):
        return value
    parts = []
    for message in value:
        if isinstance(message, dict):
            content = message.get("content", message.get("value", ""))
            role = message.get("role", message.get("from", ""))
            parts.append(f"{role}: {content}" if role else str(content))
        else:
            parts.append(str(message))
    return "\n".join(parts)


def _nonempty_rows(dataset: Any, fields: tuple[str, ...]) -> np.ndarray:
    """The indices of rows with text in some field: one vectorised Arrow pass, no row decoded to Python. A string
    field counts when something is left after trimming whitespace (as ``str.strip``), a message list when it holds
    a message (one whose role and content are both empty still counts), an all-null column never."""
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")
    keep = np.zeros(len(dataset), bool)
    for field in fields:
        column = table[field]
        if pa_types.is_null(column.type):
            continue
        if pa_types.is_string(column.type) or pa_types.is_large_string(column.type):
            has_text = pc.greater(pc.binary_length(pc.utf8_trim_whitespace(column)), 0)
        elif pa_types.is_list(column.type) or pa_types.is_large_list(column.type):
            has_text = pc.greater(pc.list_value_length(column), 0)
        else:
            raise DataSourceError(f"field {field!r} holds {column.type}, not text or a list of messages")
        keep |= np.asarray(pc.fill_null(has_text, False), bool)
    return np.flatnonzero(keep)


def text_examples(source: str | Path | DatasetSpec, *, local_path: str | Path | None = None, **kwargs: Any) -> Examples:
    """The texts of a ``text``/``chat`` source as `Examples` read on demand: one string per non-empty row (multiple
    fields joined by a blank line). ``kwargs`` go to :func:`load_source` (``cache_dir``, ``limit``).

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "notes.txt")
        >>> _ = open(path, "w").write("first line\\n\\nsecond line\\nthird\\n")
        >>> texts = text_examples(path)
        >>> len(texts), texts[2], texts.reads
        (3, 'third', 1)
    """
    spec = resolve_source(source)
    if spec.kind not in ("text", "chat"):
        raise DataSourceError(f"dataset {spec.name!r} is a {spec.kind!r} source, not text")
    dataset = load_source(spec, local_path=local_path, **kwargs)
    rows = _nonempty_rows(dataset, spec.fields)

    def read(idx: np.ndarray) -> list[str]:
        batch = dataset[rows[idx].tolist()]
        columns = [batch[field] for field in spec.fields]
        return ["\n\n".join(_render_message_list(v) for v in row if v) for row in zip(*columns)]

    return Examples(len(rows), read)


def load_texts(source: str | Path | DatasetSpec, *, local_path: str | Path | None = None, **kwargs: Any) -> list[str]:
    """Every text of a ``text``/``chat`` source, read now (:func:`text_examples` reads them on demand).

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "notes.txt")
        >>> _ = open(path, "w").write("first line\\n\\nsecond line\\n")
        >>> load_texts(path)
        ['first line', 'second line']
    """
    return list(text_examples(source, local_path=local_path, **kwargs))


def load_mcq(source: str | Path | DatasetSpec, *, local_path: str | Path | None = None, **kwargs: Any) -> list[MCQItem]:
    """The items of an ``mcq`` source (WMDP, MMLU or a local file with the same fields)."""
    spec = resolve_source(source)
    if spec.kind != "mcq":
        raise DataSourceError(f"dataset {spec.name!r} is a {spec.kind!r} source, not multiple choice")
    dataset = load_source(spec, local_path=local_path, **kwargs)
    q_field, c_field, a_field = spec.fields[:3]
    has_subject = len(spec.fields) > 3 and spec.fields[3] in dataset.column_names
    items = []
    for row in dataset:
        answer = row[a_field]
        answer = MCQ_LETTERS.index(answer) if isinstance(answer, str) else int(answer)
        subject = row[spec.fields[3]] if has_subject else spec.subject
        items.append(MCQItem(row[q_field], tuple(row[c_field]), answer, subject))
    return items


def split_transcript(transcript: str, marker: str = "\n\nAssistant:") -> tuple[str, str]:
    """Splits an HH-style ``Human: ... Assistant: ...`` transcript into (prompt ending in the marker, last reply).

    Example:
        >>> split_transcript("\\n\\nHuman: hi\\n\\nAssistant: hello")
        ('\\n\\nHuman: hi\\n\\nAssistant:', ' hello')
    """
    head, found, reply = transcript.rpartition(marker)
    if not found:
        raise DataSourceError(f"transcript has no {marker!r} turn: {transcript[:80]!r}")
    return head + marker, reply


def _check_transcripts(dataset: Any, spec: DatasetSpec, marker: str = "\n\nAssistant:") -> None:
    """Refuses, before any row is read, transcripts without an assistant turn (one vectorised Arrow pass)."""
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")
    for field in spec.fields[:2]:
        ok = np.asarray(pc.fill_null(pc.match_substring(table[field], marker), False), bool)
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            raise DataSourceError(
                f"dataset {spec.name!r}: the {field!r} transcript of row {row} has no {marker!r} turn"
            )


def preference_examples(
    source: str | Path | DatasetSpec, *, local_path: str | Path | None = None, **kwargs: Any
) -> Examples:
    """Preference pairs from HH-style transcripts (chosen / rejected share the prompt), read on demand."""
    spec = resolve_source(source)
    if spec.kind != "preference":
        raise DataSourceError(f"dataset {spec.name!r} is a {spec.kind!r} source, not preference pairs")
    dataset = load_source(spec, local_path=local_path, **kwargs)
    _check_transcripts(dataset, spec)

    def read(idx: np.ndarray) -> list[PreferencePair]:
        batch = dataset[idx.tolist()]
        pairs = []
        for chosen, rejected in zip(batch[spec.fields[0]], batch[spec.fields[1]], strict=True):
            prompt, chosen_reply = split_transcript(chosen)
            _, rejected_reply = split_transcript(rejected)
            pairs.append(PreferencePair(prompt, chosen_reply, rejected_reply))
        return pairs

    return Examples(len(dataset), read)


def load_preferences(
    source: str | Path | DatasetSpec, *, local_path: str | Path | None = None, **kwargs: Any
) -> list[PreferencePair]:
    """Every preference pair of a source, read now (:func:`preference_examples` reads them on demand)."""
    return list(preference_examples(source, local_path=local_path, **kwargs))
