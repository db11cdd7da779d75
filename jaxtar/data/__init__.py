"""Data: Hub datasets with pinned revisions and local files (sources), fixed-length batches (batching), and the
offline toy world with its base model (toy).

Example:
    >>> from jaxtar.data import toy_world, tokenize_texts, BatchIterator
    >>> world = toy_world(0)
    >>> batches = BatchIterator(tokenize_texts(world.tokenizer, world.forget_texts, 48), batch_size=8, seed=0)
    >>> next(batches)["input_ids"].shape
    (8, 48)
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
from jaxtar.data.sources import (
    DATASETS,
    MCQ_LETTERS,
    MMLU_BIO_SUBJECTS,
    MMLU_CYBER_SUBJECTS,
    DatasetSpec,
    DataSourceError,
    MCQItem,
    PreferencePair,
    build_mcq_prompt,
    format_mcq_item,
    load_mcq,
    load_preferences,
    load_source,
    load_texts,
    resolve_source,
    split_transcript,
)
from jaxtar.data.toy import (
    MAX_LENGTH,
    TOY_WORLD_VERSION,
    Fact,
    ToyBaseModel,
    ToyTrainConfig,
    ToyWorld,
    mcq_letter_accuracy,
    mcq_letter_predictions,
    quiz_text,
    toy_base_model_path,
    toy_model_config,
    toy_world,
    train_toy_base_model,
)

__all__ = [
    "DATASETS",
    "MAX_LENGTH",
    "MCQ_LETTERS",
    "MMLU_BIO_SUBJECTS",
    "MMLU_CYBER_SUBJECTS",
    "TOY_WORLD_VERSION",
    "Batch",
    "BatchIterator",
    "DataSourceError",
    "DatasetSpec",
    "Fact",
    "MCQItem",
    "PreferencePair",
    "ToyBaseModel",
    "ToyTrainConfig",
    "ToyWorld",
    "build_mcq_prompt",
    "epoch_permutation",
    "format_mcq_item",
    "load_mcq",
    "load_preferences",
    "load_source",
    "load_texts",
    "mcq_letter_accuracy",
    "mcq_letter_predictions",
    "pack_texts",
    "pad_id",
    "quiz_text",
    "resolve_source",
    "split_transcript",
    "stack_batches",
    "tokenize_preferences",
    "tokenize_prompt_response",
    "tokenize_texts",
    "toy_base_model_path",
    "toy_model_config",
    "toy_world",
    "train_toy_base_model",
]
