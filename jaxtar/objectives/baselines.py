"""The losses of the baselines TAR's tables compare against (docs/methods.md#baselines): max-entropy and
min-posterior training (the official TAR repository's ``modules/baselines.py``), LLMU (Yao et al. 2023, *Large
Language Model Unlearning*, arXiv 2310.10683) and RMU (Li et al. 2024, *The WMDP Benchmark*, arXiv 2403.03218).

All are pure functions of logits or hidden states and batch dicts (``input_ids``, ``attention_mask``, optional
``loss_mask``; see :mod:`jaxtar.objectives.lm` for the conventions). Means run over real tokens; ``unmasked=True``
averages over every position, padding included, as the reference code does.

- max entropy: ``-mean_t H(p_t)`` on forget text (:func:`max_entropy_loss`);
- min posterior: ``-mean_t log(1 - p(y_t))`` on forget text, tokens with ``log p(y_t) < threshold`` dropped
  (:func:`min_posterior_loss`);
- LLMU: ``w_ga * (-CE(forget)) + w_rand * CE(forget input -> benign tokens) + w_kl * KL(p_orig || p)`` on benign
  text (:func:`gradient_ascent_loss`, :func:`random_completion_loss`, :func:`kl_to_reference`);
- RMU: ``mean ||h_l - c u||^2 / D`` on forget text + ``alpha * mean ||h_l - h_l^frozen||^2 / D`` on retain text,
  ``u`` a fixed random unit vector (:func:`rmu_steering_vector`, :func:`activation_mse`).

Example:
    >>> import jax.numpy as jnp
    >>> batch = {"input_ids": jnp.array([[0, 1, 2]]), "attention_mask": jnp.ones((1, 3), jnp.int32)}
    >>> float(max_entropy_loss(jnp.zeros((1, 3, 4)), batch)) == -float(jnp.log(4.0))  # uniform: maximal entropy
    True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtar.objectives._precision import at_least_f32
from jaxtar.objectives.entropy import negative_entropy_loss
from jaxtar.objectives.lm import batch_loss_mask, masked_mean, next_token_cross_entropy, next_token_log_probs

Batch = dict[str, jax.Array]


def _token_mask(batch: Batch, unmasked: bool) -> jax.Array | None:
    return None if unmasked else batch.get("attention_mask")


def _target_mask(batch: Batch, unmasked: bool) -> jax.Array | None:
    """The ``[B, T - 1]`` mask of the predicted targets (None: all)."""
    mask = batch_loss_mask(batch)
    return None if unmasked or mask is None else mask[:, 1:]


def max_entropy_loss(logits_btv: jax.Array, batch: Batch, *, unmasked: bool = False) -> jax.Array:
    """Max-entropy training's forget loss: the negative mean entropy of the next-token distributions.

    ``L = -mean_{b,t} H(softmax(logits[b, t]))`` over the real input positions (``attention_mask``); minimising it
    makes the model maximally unsure on forget text. The same quantity as TAR's entropy tamper loss, here applied
    to the *defended* model directly instead of after simulated attacks.

    Example:
        >>> batch = {"input_ids": jnp.zeros((1, 2), jnp.int32), "attention_mask": jnp.array([[1, 0]])}
        >>> float(max_entropy_loss(jnp.array([[[0.0, 0.0], [5.0, 0.0]]]), batch))  # the masked position is ignored
        -0.6931471...
    """
    return negative_entropy_loss(logits_btv, batch.get("attention_mask"), unmasked=unmasked)


def log_one_minus_p(logits_btv: jax.Array, labels_bt: jax.Array) -> jax.Array:
    """``log(1 - p(labels[b, t + 1]))`` at every predicting position ``[B, T - 1]``, computed stably as
    ``logsumexp(logits without the target) - logsumexp(logits)`` (no cancellation when ``p`` is near 1).

    Example:
        >>> v = log_one_minus_p(jnp.log(jnp.array([[[0.5, 0.25, 0.25], [1.0, 1.0, 1.0]]])), jnp.array([[0, 1]]))
        >>> bool(jnp.isclose(v[0, 0], jnp.log(0.75)))  # p(target 1) = 0.25 at position 0
        True
    """
    logits = at_least_f32(logits_btv[:, :-1])
    targets = labels_bt[:, 1:].astype(jnp.int32)
    is_target = jax.nn.one_hot(targets, logits.shape[-1], dtype=bool)
    rest = jax.nn.logsumexp(jnp.where(is_target, -jnp.inf, logits), axis=-1)
    return rest - jax.nn.logsumexp(logits, axis=-1)


def min_posterior_loss(
    logits_btv: jax.Array, batch: Batch, *, threshold: float = -15.0, unmasked: bool = False
) -> jax.Array:
    """Min-posterior training's forget loss: push the probability of every forget token towards 0.

    ``L = -sum_t [log p(y_t) >= threshold] log(1 - p(y_t)) / #targets``: tokens the model already gives
    ``log p < threshold`` contribute 0 but stay in the count (as in the official ``log_1_minus_p_loss``,
    threshold -15).

    Example:
        >>> batch = {"input_ids": jnp.array([[0, 0, 1]]), "attention_mask": jnp.ones((1, 3), jnp.int32)}
        >>> logits = jnp.log(jnp.array([[[0.5, 0.5], [0.8, 0.2], [0.5, 0.5]]]))  # p(y_1) = 0.5, p(y_2) = 0.2
        >>> bool(jnp.isclose(min_posterior_loss(logits, batch), -(jnp.log(0.5) + jnp.log(0.8)) / 2))
        True
    """
    labels = batch["input_ids"]
    log_p = next_token_log_probs(logits_btv, labels)
    per_token = jnp.where(log_p < threshold, 0.0, -log_one_minus_p(logits_btv, labels))
    return masked_mean(per_token, _target_mask(batch, unmasked))


def gradient_ascent_loss(logits_btv: jax.Array, batch: Batch, *, unmasked: bool = False) -> jax.Array:
    """LLMU's forget term: the negated next-token cross-entropy (minimising it is gradient ascent on the CE).

    Example:
        >>> batch = {"input_ids": jnp.zeros((1, 3), jnp.int32), "attention_mask": jnp.ones((1, 3), jnp.int32)}
        >>> bool(jnp.isclose(gradient_ascent_loss(jnp.zeros((1, 3, 8)), batch), -jnp.log(8.0)))
        True
    """
    mask = None if unmasked else batch_loss_mask(batch)
    return -next_token_cross_entropy(logits_btv, batch["input_ids"], mask)


def random_completion_loss(
    logits_btv: jax.Array, batch: Batch, completion: Batch, *, unmasked: bool = False
) -> jax.Array:
    """LLMU's random-completion term: the cross-entropy of the model run on *forget* input (``logits_btv``,
    ``batch``) against the tokens of an unrelated *benign* row (``completion``) at the same positions.

    ``L = -sum_t m_t log p(z_{t+1} | x_{<=t}) / sum_t m_t`` with ``x`` the forget row, ``z`` the benign row and
    ``m_t`` = 1 where both rows are real tokens (all positions with ``unmasked``). This is how the official TAR
    repository realises LLMU's "random output" loss on plain text (``obj_mismatch_next_token``); LLMU's own code
    appends random benign answers to the harmful prompts.

    Example:
        >>> forget = {"input_ids": jnp.zeros((1, 3), jnp.int32), "attention_mask": jnp.ones((1, 3), jnp.int32)}
        >>> benign = {"input_ids": jnp.array([[0, 1, 1]]), "attention_mask": jnp.array([[1, 1, 0]])}
        >>> logits = jnp.log(jnp.array([[[0.5, 0.5], [0.9, 0.1], [0.5, 0.5]]]))
        >>> bool(jnp.isclose(random_completion_loss(logits, forget, benign), -jnp.log(0.5)))  # only z_1 counts
        True
    """
    if completion["input_ids"].shape != batch["input_ids"].shape:
        raise ValueError(
            f"the completion rows {completion['input_ids'].shape} must match the forget rows {batch['input_ids'].shape}"
        )
    mask = None
    if not unmasked:
        own, other = batch.get("attention_mask"), batch_loss_mask(completion)
        mask = other if own is None else (own if other is None else own * other)
    return next_token_cross_entropy(logits_btv, completion["input_ids"], mask)


def kl_to_reference(
    logits_btv: jax.Array, reference_logits_btv: jax.Array, batch: Batch, *, unmasked: bool = False
) -> jax.Array:
    """LLMU's normal-data term: the forward KL divergence from the original (frozen) model's next-token
    distribution ``p`` to the current one ``q``, averaged over real positions.

    ``L = mean_{b,t} sum_v p_v (log p_v - log q_v)``; no gradient flows into ``reference_logits_btv``. LLMU's code
    minimises ``-sum_v p_v log q_v``, which differs by the entropy of ``p``, a constant: the same gradient, but
    this value is 0 at the start.

    Example:
        >>> batch = {"input_ids": jnp.zeros((1, 1), jnp.int32), "attention_mask": jnp.ones((1, 1), jnp.int32)}
        >>> p, q = jnp.log(jnp.array([[[0.5, 0.5]]])), jnp.log(jnp.array([[[0.25, 0.75]]]))
        >>> bool(jnp.isclose(kl_to_reference(q, p, batch), 0.5 * jnp.log(2.0) + 0.5 * jnp.log(0.5 / 0.75)))
        True
    """
    if logits_btv.shape != reference_logits_btv.shape:
        raise ValueError(f"logits {logits_btv.shape} and reference logits {reference_logits_btv.shape} differ")
    log_q = jax.nn.log_softmax(at_least_f32(logits_btv), axis=-1)
    log_p = jax.nn.log_softmax(at_least_f32(jax.lax.stop_gradient(reference_logits_btv)), axis=-1)
    kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
    return masked_mean(kl, _token_mask(batch, unmasked))


def rmu_steering_vector(key: jax.Array, hidden_size: int, coefficient: float) -> jax.Array:
    """RMU's control vector ``c * u / ||u||`` with ``u ~ Uniform[0, 1)^D`` (as the WMDP code draws it: every
    coordinate non-negative), fixed for the whole run.

    Example:
        >>> v = rmu_steering_vector(jax.random.key(0), 16, 6.5)
        >>> v.shape, round(float(jnp.linalg.norm(v)), 4), bool((v >= 0).all())
        ((16,), 6.5, True)
    """
    u = jax.random.uniform(key, (hidden_size,), jnp.float32)
    return coefficient * u / jnp.linalg.norm(u)


def activation_mse(hidden_btd: jax.Array, target: jax.Array, batch: Batch, *, unmasked: bool = False) -> jax.Array:
    """Mean squared error between hidden states ``[B, T, D]`` and a target (``[B, T, D]``, or ``[D]`` broadcast
    to every token), averaged over the ``D`` features and the real tokens: RMU's two terms.

    ``L = sum_{b,t} m_bt ||h_bt - target_bt||^2 / (D sum_{b,t} m_bt)``; with ``unmasked`` (``m = 1``) this is
    ``torch.nn.functional.mse_loss`` as the WMDP code calls it. No gradient flows into ``target`` (the steering
    vector on forget text; the frozen model's activations on retain text).

    Example:
        >>> h = jnp.array([[[1.0, 1.0], [3.0, 3.0]]])
        >>> batch = {"input_ids": jnp.zeros((1, 2), jnp.int32), "attention_mask": jnp.array([[1, 0]])}
        >>> float(activation_mse(h, jnp.array([0.0, 2.0]), batch))  # ((1 - 0)^2 + (1 - 2)^2) / 2; token 2 masked
        1.0
    """
    if hidden_btd.ndim != 3:
        raise ValueError(f"hidden states must be [B, T, D], got {hidden_btd.shape}")
    diff = at_least_f32(hidden_btd) - at_least_f32(jax.lax.stop_gradient(target))
    return masked_mean(jnp.mean(jnp.square(diff), axis=-1), _token_mask(batch, unmasked))
