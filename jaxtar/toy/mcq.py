"""The toy world's multiple-choice scoring: the answer letter with the largest logit after a 0-shot prompt.

The letters' logits at the last position of each left-padded prompt decide (the letter tokens of
`jaxtar.data.mcq.letter_token_ids`: ``A`` .. ``D`` for the word-level toy tokenizer, `` A`` .. `` D`` for a BPE one
such as SmolLM2's); `jaxtar.eval.mcq` is the general scorer (k-shot prompts, standard errors) the red team uses.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxtar.data.batching import tokenize_texts
from jaxtar.data.mcq import MCQItem, build_mcq_prompt, letter_token_ids


@functools.partial(jax.jit, static_argnums=0)
def _letter_logits(model: Any, params: Any, ids: Any, mask: Any, letters: Any) -> Any:
    return model.apply(params, ids, mask).logits[:, -1][:, letters]


def mcq_letter_predictions(
    model: Any, params: Any, tokenizer: Any, items: Sequence[MCQItem], batch_size: int = 256
) -> np.ndarray:
    """Index of the choice letter with the largest logit at the last position of each 0-shot prompt.

    Prompts are left-padded to a multiple of 16 tokens and scored ``batch_size`` at a time, so repeated calls on
    one model reuse a single compilation.
    """
    if not items:
        raise ValueError("no items to score")
    n_choices = {len(i.choices) for i in items}
    if len(n_choices) != 1:
        raise ValueError(f"all items need the same number of choices, got {sorted(n_choices)}")
    letters = np.array(letter_token_ids(tokenizer, n_choices.pop()))
    prompts = [build_mcq_prompt(i) for i in items]
    length = -(-max(len(ids) for ids in tokenizer(prompts)["input_ids"]) // 16) * 16
    data = tokenize_texts(tokenizer, prompts, length, padding_side="left")
    out = []
    for start in range(0, len(items), batch_size):
        ids, mask = (np.asarray(data[k][start : start + batch_size]) for k in ("input_ids", "attention_mask"))
        n = len(ids)
        ids = np.pad(ids, ((0, batch_size - n), (0, 0)))
        mask = np.pad(mask, ((0, batch_size - n), (0, 0)), constant_values=1)
        out.append(np.asarray(_letter_logits(model, params, ids, mask, letters)).argmax(-1)[:n])
    return np.concatenate(out)


def mcq_letter_accuracy(
    model: Any, params: Any, tokenizer: Any, items: Sequence[MCQItem], batch_size: int = 256
) -> float:
    """Fraction of items whose :func:`mcq_letter_predictions` is the correct answer (chance: 1 / #choices).

    Example:
        >>> acc = mcq_letter_accuracy(model, params, world.tokenizer, world.forget_mcq)  # doctest: +SKIP
    """
    predicted = mcq_letter_predictions(model, params, tokenizer, items, batch_size)
    return float(np.mean(predicted == np.array([i.answer for i in items])))
