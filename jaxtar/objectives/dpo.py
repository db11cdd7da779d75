"""Sigmoid DPO (Rafailov et al. 2023): TAR's tamper-resistance loss in the refusal setting.

The reference model's sequence log-probabilities are computed once, before training, and passed in as arrays
(for a whole dataset :func:`reference_log_probs`; TAR computes them on its mesh with
`jaxtar.defenses.tar_data.preference_reference`), so no second copy of the model is needed inside the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxtar.objectives._precision import at_least_f32
from jaxtar.objectives.lm import sequence_log_probs, sequence_log_probs_from_hidden


class DPOOutput(NamedTuple):
    """Result of :func:`dpo_loss` (a pytree).

    Attributes:
        loss: scalar mean of ``-log sigmoid(beta * margin)``.
        reward_accuracy: fraction of pairs whose chosen reward exceeds the rejected reward.
        chosen_rewards: ``[B]`` ``beta * (log pi(chosen) - log ref(chosen))``.
        rejected_rewards: ``[B]`` the same for the rejected responses.
    """

    loss: jax.Array
    reward_accuracy: jax.Array
    chosen_rewards: jax.Array
    rejected_rewards: jax.Array


def dpo_loss(
    policy_chosen_logps: jax.Array,
    policy_rejected_logps: jax.Array,
    reference_chosen_logps: jax.Array,
    reference_rejected_logps: jax.Array,
    beta: float = 0.1,
) -> DPOOutput:
    """Sigmoid DPO loss from summed response log-probabilities.

    Args:
        policy_chosen_logps: ``[B]`` log pi(chosen | prompt) of the trained model (summed over response tokens).
        policy_rejected_logps: ``[B]`` log pi(rejected | prompt).
        reference_chosen_logps: ``[B]`` the same under the frozen reference model (no gradient flows here).
        reference_rejected_logps: ``[B]``.
        beta: inverse temperature (TAR uses 0.1).

    Returns:
        A :class:`DPOOutput`.

    Example:
        >>> out = dpo_loss(jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), jnp.zeros(2))
        >>> bool(jnp.isclose(out.loss, jnp.log(2.0)))
        True
    """
    if isinstance(beta, int | float) and beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    shapes = {
        a.shape for a in (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    }
    if len(shapes) != 1:
        raise ValueError(f"all four log-prob arrays must have the same shape, got {sorted(shapes)}")
    ref_chosen = jax.lax.stop_gradient(at_least_f32(reference_chosen_logps))
    ref_rejected = jax.lax.stop_gradient(at_least_f32(reference_rejected_logps))
    chosen_rewards = beta * (at_least_f32(policy_chosen_logps) - ref_chosen)
    rejected_rewards = beta * (at_least_f32(policy_rejected_logps) - ref_rejected)
    loss = -jnp.mean(jax.nn.log_sigmoid(chosen_rewards - rejected_rewards))
    accuracy = jnp.mean((chosen_rewards > rejected_rewards).astype(chosen_rewards.dtype))
    return DPOOutput(loss, accuracy, chosen_rewards, rejected_rewards)


def dpo_loss_from_logits(
    chosen_logits_btv: jax.Array,
    rejected_logits_btv: jax.Array,
    batch: dict[str, jax.Array],
    beta: float = 0.1,
) -> DPOOutput:
    """DPO on a preference batch: policy log-probs from logits, reference log-probs from the batch.

    Args:
        chosen_logits_btv: ``[B, T, V]`` policy logits on ``batch["chosen_input_ids"]``.
        rejected_logits_btv: ``[B, T, V]`` policy logits on ``batch["rejected_input_ids"]``.
        batch: keys ``chosen_input_ids``, ``chosen_loss_mask``, ``rejected_input_ids``, ``rejected_loss_mask``
            (response-token masks) and the cached ``reference_chosen_logps`` / ``reference_rejected_logps``.
        beta: inverse temperature.

    Example:
        >>> b = {"chosen_input_ids": jnp.zeros((1, 3), jnp.int32), "chosen_loss_mask": jnp.array([[0, 1, 1]]),
        ...      "rejected_input_ids": jnp.zeros((1, 3), jnp.int32), "rejected_loss_mask": jnp.array([[0, 1, 1]]),
        ...      "reference_chosen_logps": jnp.zeros(1), "reference_rejected_logps": jnp.zeros(1)}
        >>> float(dpo_loss_from_logits(jnp.zeros((1, 3, 4)), jnp.zeros((1, 3, 4)), b).reward_accuracy)
        0.0
    """
    chosen = sequence_log_probs(chosen_logits_btv, batch["chosen_input_ids"], batch["chosen_loss_mask"])
    rejected = sequence_log_probs(rejected_logits_btv, batch["rejected_input_ids"], batch["rejected_loss_mask"])
    return dpo_loss(chosen, rejected, batch["reference_chosen_logps"], batch["reference_rejected_logps"], beta)


def dpo_loss_from_hidden(
    chosen_hidden_btd: jax.Array,
    rejected_hidden_btd: jax.Array,
    head_dv: jax.Array,
    batch: dict[str, jax.Array],
    beta: float = 0.1,
    *,
    chunk: int | None = None,
) -> DPOOutput:
    """:func:`dpo_loss_from_logits` from final hidden states and the LM head, ``chunk`` tokens at a time (None:
    all the logits at once; see :mod:`jaxtar.objectives.lm`).

    Example:
        >>> b = {"chosen_input_ids": jnp.zeros((1, 3), jnp.int32), "chosen_loss_mask": jnp.array([[0, 1, 1]]),
        ...      "rejected_input_ids": jnp.zeros((1, 3), jnp.int32), "rejected_loss_mask": jnp.array([[0, 1, 1]]),
        ...      "reference_chosen_logps": jnp.zeros(1), "reference_rejected_logps": jnp.zeros(1)}
        >>> h, w = jnp.ones((1, 3, 2)), jnp.zeros((2, 4))
        >>> bool(jnp.isclose(dpo_loss_from_hidden(h, h, w, b, chunk=1).loss, jnp.log(2.0)))
        True
    """
    chosen = sequence_log_probs_from_hidden(
        chosen_hidden_btd, head_dv, batch["chosen_input_ids"], batch["chosen_loss_mask"], chunk=chunk
    )
    rejected = sequence_log_probs_from_hidden(
        rejected_hidden_btd, head_dv, batch["rejected_input_ids"], batch["rejected_loss_mask"], chunk=chunk
    )
    return dpo_loss(chosen, rejected, batch["reference_chosen_logps"], batch["reference_rejected_logps"], beta)


def reference_log_probs(
    logits_fn: Callable[[jax.Array, jax.Array], jax.Array],
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    loss_mask: np.ndarray,
    batch_size: int = 32,
) -> np.ndarray:
    """Caches the reference model's summed response log-probs for a whole dataset, once.

    Args:
        logits_fn: ``(input_ids_bt, attention_mask_bt) -> logits_btv`` of the frozen reference model
            (e.g. ``lambda ids, m: model.apply(params, ids, m).logits``); it is jitted here.
        input_ids: ``[N, T]`` token ids.
        attention_mask: ``[N, T]``.
        loss_mask: ``[N, T]`` response-token mask.
        batch_size: examples per forward pass (the last batch is padded, so one compilation).

    Returns:
        ``[N]`` float32 numpy array of summed response log-probs.

    Example:
        >>> fn = lambda ids, m: jnp.zeros(ids.shape + (4,))
        >>> reference_log_probs(fn, np.zeros((3, 2), np.int32), np.ones((3, 2)), np.ones((3, 2)), 2).round(3)
        array([-1.386, -1.386, -1.386], dtype=float32)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = input_ids.shape[0]
    if attention_mask.shape != input_ids.shape or loss_mask.shape != input_ids.shape:
        raise ValueError(
            f"input_ids {input_ids.shape}, attention_mask {attention_mask.shape} and loss_mask {loss_mask.shape} "
            "must have the same shape"
        )

    @jax.jit
    def _score(ids, attn, mask):
        return sequence_log_probs(logits_fn(ids, attn), ids, mask)

    out = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        pad = batch_size - (stop - start)
        ids, attn, mask = (np.pad(a[start:stop], ((0, pad), (0, 0))) for a in (input_ids, attention_mask, loss_mask))
        out.append(np.asarray(_score(ids, attn, mask))[: stop - start])
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0,), np.float32)
