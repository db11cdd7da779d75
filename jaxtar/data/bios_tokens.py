"""Bias in Bios as model inputs: the word-level tokenizer of the small offline BERT (fitted on word counts, which
processes can count on their own shares and add up) and fixed-length encodings, made at once or row by row.

Example:
    >>> from jaxtar.data.bias_in_bios import synthetic_bias_in_bios
    >>> bios = synthetic_bias_in_bios(400)
    >>> tokenizer = word_tokenizer(count_words(bios["train"]["hard_text"]), min_frequency=2)
    >>> lazy = encode_bios_lazily(bios["train"], tokenizer, max_length=24)
    >>> lazy["input_ids"].shape == encode_bios(bios["train"], tokenizer, 24)["input_ids"].shape
    True
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxtar.data.examples import Examples
from jaxtar.data.rows import RowTable, gather

if TYPE_CHECKING:  # heavy imports stay lazy: importing jaxtar.data must not pull in datasets/transformers
    import datasets
    import transformers

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4 in that order
LABELS: tuple[str, ...] = ("profession", "gender")


def _normalizer_and_splitter():
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    return normalizer, pre_tokenizers.BertPreTokenizer()


def count_words(texts: Iterable[str]) -> collections.Counter:
    """How often each word occurs in ``texts``, words split as :func:`word_tokenizer` splits them (lower-cased,
    BERT-style on whitespace and punctuation). Counts of disjoint shares add up to the counts of the whole.

    Example:
        >>> count_words(["They teach.", "they"]) == {"they": 2, "teach": 1, ".": 1}
        True
    """
    normalizer, pre = _normalizer_and_splitter()
    split = lambda text: (word for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))  # noqa: E731
    return collections.Counter(word for text in texts for word in split(text))


def word_tokenizer(
    counts: Mapping[str, int], *, min_frequency: int = 1, max_vocab_size: int | None = None
) -> transformers.PreTrainedTokenizerFast:
    """A lower-cased word-level fast tokenizer with BERT special tokens ([PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4)
    over the words of ``counts`` (:func:`count_words`) seen at least ``min_frequency`` times.

    The vocabulary is ordered by frequency then alphabetically (deterministic: equal counts, equal tokenizer);
    encodings are ``[CLS] words [SEP]``.

    Example:
      >>> tok = build_word_tokenizer(["They teach yoga .", "They write code ."])
      >>> tok("they write poems")["input_ids"]   # poems is unknown
      [2, 6, 9, 1, 3]
    """
    from tokenizers import Tokenizer, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = sorted((w for w, c in counts.items() if c >= min_frequency), key=lambda w: (-counts[w], w))
    if max_vocab_size is not None:
        words = words[: max(0, max_vocab_size - len(SPECIAL_TOKENS))]
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *words])}
    core = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    core.normalizer, core.pre_tokenizer = _normalizer_and_splitter()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_input_names=["input_ids", "attention_mask"],
    )  # fmt: skip


def build_word_tokenizer(
    texts: Iterable[str], *, min_frequency: int = 1, max_vocab_size: int | None = None
) -> transformers.PreTrainedTokenizerFast:
    """:func:`word_tokenizer` fitted on ``texts``."""
    return word_tokenizer(count_words(texts), min_frequency=min_frequency, max_vocab_size=max_vocab_size)


def encode_texts(
    texts: Sequence[str], tokenizer: transformers.PreTrainedTokenizerBase, max_length: int
) -> dict[str, np.ndarray]:
    """``texts`` as fixed-length int32 ``input_ids`` and ``attention_mask`` [N, max_length] (each text on its own:
    truncated or padded)."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 ([CLS] and [SEP]), got {max_length}")
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int32), "attention_mask": enc["attention_mask"].astype(np.int32)}


def encode_bios(
    split: datasets.Dataset | dict[str, Sequence], tokenizer: transformers.PreTrainedTokenizerBase, max_length: int
) -> dict[str, np.ndarray]:
    """Tokenise a split to fixed-length int32 arrays: input_ids, attention_mask [N, T]; profession, gender [N].

    Example:
      >>> from jaxtar.data.bias_in_bios import synthetic_bias_in_bios
      >>> bios = synthetic_bias_in_bios()
      >>> tok = build_word_tokenizer(bios["train"]["hard_text"])
      >>> arrays = encode_bios(bios["val1"], tok, max_length=64)
      >>> arrays["input_ids"].shape, arrays["gender"].dtype
      ((200, 64), dtype('int32'))
    """
    columns = split if isinstance(split, dict) else split[:]  # one batch read (iterating a Column is slow)
    tokens = encode_texts(columns["hard_text"], tokenizer, max_length)
    return {**tokens, **{name: np.asarray(columns[name], np.int32) for name in LABELS}}


def encode_bios_lazily(
    split: datasets.Dataset, tokenizer: transformers.PreTrainedTokenizerBase, max_length: int
) -> dict[str, Any]:
    """:func:`encode_bios`'s columns with the token columns made on demand: ``input_ids`` and ``attention_mask`` are
    `jaxtar.data.rows.TableRows` whose rows are read from ``split`` and tokenised when first read, so that placed
    across processes (`jaxtar.parallel.put`) each process reads and tokenises only the rows of its own shards; the
    label columns are read whole (two int columns).

    Example:
        >>> from jaxtar.data.bias_in_bios import synthetic_bias_in_bios
        >>> val = synthetic_bias_in_bios(400)["val1"]
        >>> lazy = encode_bios_lazily(val, build_word_tokenizer(val["hard_text"]), max_length=16)
        >>> lazy["input_ids"][:2].shape, lazy["input_ids"].tables[0].made  # rows 0 and 1 (row 0 on creation)
        ((2, 16), 2)
    """
    n = len(split)
    texts = Examples(n, lambda idx: list(split[idx.tolist()]["hard_text"]))
    table = RowTable.of_examples(texts, lambda batch: encode_texts(batch, tokenizer, max_length))
    labels = split.select_columns(list(LABELS)).with_format("numpy")[:]
    tokens = gather([table], np.zeros(n, np.int64), np.arange(n))
    return {**tokens, **{name: np.asarray(labels[name], np.int32) for name in LABELS}}
