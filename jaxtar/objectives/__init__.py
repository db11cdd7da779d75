"""Pure loss functions of logits / hidden states and a batch (all masked; see :mod:`jaxtar.objectives.lm`).

The LM losses also come as ``*_from_hidden(hidden_btd, head_dv, ..., chunk=None)``: from the final hidden states
and the LM head, ``chunk`` tokens' logits at a time so the ``[B, T, V]`` logits are never held (large vocabularies).

Example:
    >>> import jax.numpy as jnp
    >>> from jaxtar.objectives import next_token_cross_entropy
    >>> float(next_token_cross_entropy(jnp.zeros((1, 4, 2)), jnp.zeros((1, 4), jnp.int32))) == float(jnp.log(2.0))
    True
"""

from jaxtar.objectives._chunks import head_logits
from jaxtar.objectives.baselines import (
    activation_mse,
    gradient_ascent_loss,
    kl_to_reference,
    log_one_minus_p,
    max_entropy_loss,
    min_posterior_loss,
    random_completion_loss,
    rmu_steering_vector,
)
from jaxtar.objectives.calibration import calibrated_cross_entropy, remapped_cross_entropy, solve_calibration
from jaxtar.objectives.dpo import DPOOutput, dpo_loss, dpo_loss_from_hidden, dpo_loss_from_logits, reference_log_probs
from jaxtar.objectives.entropy import (
    negative_entropy_loss,
    negative_entropy_loss_from_hidden,
    next_token_entropy,
    next_token_entropy_from_hidden,
)
from jaxtar.objectives.lm import (
    batch_cross_entropy,
    batch_cross_entropy_from_hidden,
    batch_loss_mask,
    masked_mean,
    next_token_cross_entropy,
    next_token_cross_entropy_from_hidden,
    next_token_log_probs,
    next_token_log_probs_from_hidden,
    sequence_log_probs,
    sequence_log_probs_from_hidden,
)
from jaxtar.objectives.random_mapping import (
    cosine_similarity,
    random_mapping_loss,
    random_mapping_loss_from_ids,
    random_mapping_matrix,
    random_mapping_vectors,
)
from jaxtar.objectives.representation import (
    layer_list,
    per_token_distance,
    representation_distance_loss,
    safe_norm,
    stack_hidden_states,
)

__all__ = [
    "activation_mse",
    "gradient_ascent_loss",
    "kl_to_reference",
    "log_one_minus_p",
    "max_entropy_loss",
    "min_posterior_loss",
    "random_completion_loss",
    "rmu_steering_vector",
    "calibrated_cross_entropy",
    "remapped_cross_entropy",
    "solve_calibration",
    "DPOOutput",
    "batch_cross_entropy",
    "batch_cross_entropy_from_hidden",
    "batch_loss_mask",
    "cosine_similarity",
    "dpo_loss",
    "dpo_loss_from_hidden",
    "dpo_loss_from_logits",
    "head_logits",
    "layer_list",
    "masked_mean",
    "negative_entropy_loss",
    "negative_entropy_loss_from_hidden",
    "next_token_cross_entropy",
    "next_token_cross_entropy_from_hidden",
    "next_token_entropy",
    "next_token_entropy_from_hidden",
    "next_token_log_probs",
    "next_token_log_probs_from_hidden",
    "per_token_distance",
    "random_mapping_loss",
    "random_mapping_loss_from_ids",
    "random_mapping_matrix",
    "random_mapping_vectors",
    "reference_log_probs",
    "representation_distance_loss",
    "safe_norm",
    "sequence_log_probs",
    "sequence_log_probs_from_hidden",
    "stack_hidden_states",
]
