"""Data: Hub datasets with pinned revisions and local files (sources; read on demand: examples), fixed-length
batches (batching), and the Bias-in-Bios classification data (bias_in_bios; its tokenizer and encodings:
bios_tokens). The offline toy world lives in `jaxtar.toy` (it trains a model).

Example:
    >>> from jaxtar.data import MCQItem, build_mcq_prompt
    >>> build_mcq_prompt(MCQItem("2 + 2 = ?", ("3", "4"), 1)).endswith("Answer:")
    True
"""

from jaxtar.data.batching import (
    Batch,
    BatchIterator,
    epoch_permutation,
    pack_texts,
    pad_id,
    stack_batches,
    tokenize_preferences,
    tokenize_prompt_response,
    tokenize_texts,
)
from jaxtar.data.examples import Examples
from jaxtar.data.mcq import MCQ_LETTERS, MCQItem, build_mcq_prompt, format_mcq_item
from jaxtar.data.sources import (
    DATASETS,
    MMLU_BIO_SUBJECTS,
    MMLU_CYBER_SUBJECTS,
    DatasetSpec,
    DataSourceError,
    PreferencePair,
    load_mcq,
    load_preferences,
    load_source,
    load_texts,
    preference_examples,
    resolve_source,
    split_transcript,
    text_examples,
)

__all__ = [
    "DATASETS",
    "MCQ_LETTERS",
    "MMLU_BIO_SUBJECTS",
    "MMLU_CYBER_SUBJECTS",
    "Batch",
    "BatchIterator",
    "DataSourceError",
    "DatasetSpec",
    "Examples",
    "MCQItem",
    "PreferencePair",
    "build_mcq_prompt",
    "epoch_permutation",
    "format_mcq_item",
    "load_mcq",
    "load_preferences",
    "load_source",
    "load_texts",
    "pack_texts",
    "pad_id",
    "preference_examples",
    "resolve_source",
    "split_transcript",
    "stack_batches",
    "text_examples",
    "tokenize_preferences",
    "tokenize_prompt_response",
    "tokenize_texts",
]
