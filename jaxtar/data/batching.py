"""Tokenisation to fixed-length arrays, and a deterministic, resumable, infinite batch iterator.

A *batch* is a dict of int32 numpy arrays of one shape ``[B, T]`` (or ``[K, B, T]`` stacked for an inner attack
loop): ``input_ids``, ``attention_mask`` (1 = real token) and ``loss_mask`` (1 = token is a training target,
see :mod:`jaxtar.objectives.lm`). Preference data adds ``chosen_*`` / ``rejected_*`` keys.

The iterator's whole state is one integer, ``position`` (examples consumed): example ``j`` of the stream is
``perm(seed, epoch = j // N)[j % N]``, so a run restarted with the saved position yields exactly the batches the
killed run would have.

Example:
    >>> data = {"input_ids": np.arange(10).reshape(5, 2)}
    >>> it = BatchIterator(data, batch_size=2, seed=0)
    >>> first = next(it)["input_ids"]; it.position
    2
    >>> np.array_equal(BatchIterator(data, 2, seed=0, position=2).peek()["input_ids"], next(it)["input_ids"])
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

Batch = dict[str, np.ndarray]


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its eos id, else 0 (padding is always masked out)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def _encode(tokenizer: Any, texts: Sequence[str], add_special_tokens: bool) -> list[list[int]]:
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    if len(texts) == 0:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]]


def _to_rows(
    sequences: Sequence[Sequence[int]],
    masks: Sequence[Sequence[int]],
    max_length: int,
    pad: int,
    padding_side: str,
) -> Batch:
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    n = len(sequences)
    ids = np.full((n, max_length), pad, np.int32)
    attention = np.zeros((n, max_length), np.int32)
    loss = np.zeros((n, max_length), np.int32)
    for i, (seq, mask) in enumerate(zip(sequences, masks)):
        seq, mask = list(seq)[:max_length], list(mask)[:max_length]
        sl = slice(0, len(seq)) if padding_side == "right" else slice(max_length - len(seq), max_length)
        ids[i, sl] = seq
        attention[i, sl] = 1
        loss[i, sl] = mask
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss}


def tokenize_texts(
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    *,
    padding_side: str = "right",
    add_special_tokens: bool = True,
    append_eos: bool = False,
) -> Batch:
    """One row per text: tokenised, truncated to ``max_length`` (the end is cut), padded.

    Args:
        tokenizer: a ``transformers`` tokenizer.
        texts: the documents.
        max_length: row length ``T``.
        padding_side: ``right`` (training) or ``left`` (scoring the last position).
        add_special_tokens: let the tokenizer add its specials (e.g. BOS).
        append_eos: append the eos token to every text (before truncation).

    Returns:
        A batch ``[N, T]``; ``loss_mask == attention_mask``.

    Example:
        >>> from jaxtar.toy import toy_world
        >>> tok = toy_world(0).tokenizer
        >>> tokenize_texts(tok, ["the host of"], 6)["attention_mask"].tolist()
        [[1, 1, 1, 1, 0, 0]]
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    sequences = _encode(tokenizer, texts, add_special_tokens)
    if append_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("append_eos=True but the tokenizer has no eos token")
        sequences = [s + [tokenizer.eos_token_id] for s in sequences]
    return _to_rows(sequences, [[1] * len(s) for s in sequences], max_length, pad_id(tokenizer), padding_side)


def pack_texts(
    tokenizer: Any, texts: Sequence[str], max_length: int, *, add_special_tokens: bool = True, append_eos: bool = True
) -> Batch:
    """Concatenates all documents (each followed by eos) into one stream and cuts it into full rows.

    The trailing partial row is dropped (kept, right-padded, only when the stream is shorter than one row).
    Attention is not blocked across document boundaries (the usual packing trade-off).

    Example:
        >>> from jaxtar.toy import toy_world
        >>> packed = pack_texts(toy_world(0).tokenizer, ["the host of"] * 3, 5)
        >>> packed["input_ids"].shape, int(packed["attention_mask"].min())
        ((3, 5), 1)
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    eos = [tokenizer.eos_token_id] if append_eos and tokenizer.eos_token_id is not None else []
    stream = [t for seq in _encode(tokenizer, texts, add_special_tokens) for t in seq + eos]
    n_rows = max(len(stream) // max_length, 1 if stream else 0)
    rows = [stream[i * max_length : (i + 1) * max_length] for i in range(n_rows)]
    return _to_rows(rows, [[1] * len(r) for r in rows], max_length, pad_id(tokenizer), "right")


def tokenize_prompt_response(
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int,
    *,
    padding_side: str = "right",
    append_eos: bool = True,
    max_prompt_length: int | None = None,
) -> Batch:
    """Rows ``prompt + response``, with ``loss_mask`` 1 only on the response tokens (SFT, DPO).

    Prompts keep their end when too long (at most ``max_prompt_length``, default ``max_length // 2`` when the
    pair does not fit); the response is then cut to the remaining room.

    Example:
        >>> from jaxtar.toy import toy_world
        >>> b = tokenize_prompt_response(toy_world(0).tokenizer, ["the host of"], ["the"], 8)
        >>> b["loss_mask"].tolist()
        [[0, 0, 0, 0, 1, 1, 0, 0]]
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    prompt_ids = _encode(tokenizer, prompts, add_special_tokens=True)
    response_ids = _encode(tokenizer, responses, add_special_tokens=False)
    eos = [tokenizer.eos_token_id] if append_eos and tokenizer.eos_token_id is not None else []
    limit = max_length // 2 if max_prompt_length is None else max_prompt_length
    sequences, masks = [], []
    for p, r in zip(prompt_ids, response_ids):
        r = r + eos
        if len(p) + len(r) > max_length and len(p) > limit:
            p = p[-limit:] if limit > 0 else []
        r = r[: max(max_length - len(p), 0)]
        sequences.append(p + r)
        masks.append([0] * len(p) + [1] * len(r))
    return _to_rows(sequences, masks, max_length, pad_id(tokenizer), padding_side)


def tokenize_preferences(tokenizer: Any, pairs: Iterable[Any], max_length: int, **kwargs: Any) -> Batch:
    """``chosen_*`` and ``rejected_*`` rows for :class:`~jaxtar.data.sources.PreferencePair` s (DPO batches)."""
    pairs = list(pairs)
    prompts = [p.prompt for p in pairs]
    out: Batch = {}
    for side in ("chosen", "rejected"):
        rows = tokenize_prompt_response(tokenizer, prompts, [getattr(p, side) for p in pairs], max_length, **kwargs)
        out.update({f"{side}_{k}": v for k, v in rows.items()})
    return out


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of one epoch: a permutation fixed by ``(seed, epoch)`` only.

    Example:
        >>> epoch_permutation(5, seed=1, epoch=0).tolist() == epoch_permutation(5, 1, 0).tolist()
        True
    """
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def stack_batches(batches: Sequence[Batch]) -> Batch:
    """``K`` batches ``[B, ...]`` -> one batch ``[K, B, ...]`` (for a ``lax.scan`` over inner steps)."""
    if not batches:
        raise ValueError("cannot stack zero batches")
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


class BatchIterator:
    """Infinite, deterministic, resumable batches over a dict of equally long arrays.

    Args:
        data: arrays with a shared leading dimension ``N`` (e.g. from :func:`tokenize_texts`).
        batch_size: rows per batch ``B``.
        seed: shuffling seed (a new permutation each epoch; ``shuffle=False`` keeps the data order).
        position: examples already consumed (the saved state of a previous run).
        shuffle: shuffle each epoch.
    """

    def __init__(self, data: Batch, batch_size: int, seed: int = 0, position: int = 0, shuffle: bool = True):
        if not data:
            raise ValueError("data is empty")
        sizes = {k: len(v) for k, v in data.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"all arrays need the same leading size, got {sizes}")
        self.num_examples = next(iter(sizes.values()))
        if self.num_examples < 1:
            raise ValueError("data has no examples")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if position < 0:
            raise ValueError(f"position must be >= 0, got {position}")
        self.data = {k: np.asarray(v) for k, v in data.items()}
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.position = int(position)
        self._cached: tuple[int, np.ndarray] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_examples)
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, epoch_permutation(self.num_examples, self.seed, epoch))
        return self._cached[1]

    def indices(self, position: int, count: int) -> np.ndarray:
        """Dataset rows of stream positions ``position .. position + count - 1``."""
        out = np.empty(count, np.int64)
        for i in range(count):
            epoch, offset = divmod(position + i, self.num_examples)
            out[i] = self._order(epoch)[offset]
        return out

    def peek(self, batch_size: int | None = None) -> Batch:
        """The next batch, without consuming it."""
        idx = self.indices(self.position, batch_size or self.batch_size)
        return {k: v[idx] for k, v in self.data.items()}

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> Batch:
        batch = self.peek()
        self.position += self.batch_size
        return batch

    def next_stacked(self, num_batches: int) -> Batch:
        """The next ``K`` batches stacked to ``[K, B, ...]``."""
        return stack_batches([next(self) for _ in range(num_batches)])

    def state_dict(self) -> dict[str, int]:
        """The iterator's state: ``{"position": examples consumed}`` (with the seed for checking)."""
        return {"position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restores :meth:`state_dict` (the seed must match)."""
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, this iterator uses seed {self.seed}")
        self.position = int(state["position"])
