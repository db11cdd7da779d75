"""MLAC (Henderson, Mitchell et al. 2023): meta-learned adversarial censoring of a BERT classifier.

The released model is a BERT encoder with **one** bias-free linear head on the pooled output with
``num_desired + num_harmful`` outputs (30 for Bias in Bios): columns ``[:num_desired]`` are the desired task
(profession), columns ``[num_desired:]`` the harmful task (gender). The harmful columns are never used by the
defence itself: they are the *attacker's head* - the learned initial head of the simulated attacker
(``head="learned"``) or, for AC, the censoring adversary. With ``head="fresh"`` (what the official code does for
BERT) every outer step draws a new random attacker head and those columns stay untouched.

One outer step (docs/methods.md#mlac-inner-loop)::

    B      ~ outer batch (with desired and harmful labels)
    attacker: trunk = released trunk, head = fresh random (or the learned harmful columns)
    K steps of differentiable Adam(lr = learned inner lr, eps_root > 0) on the harmful CE over trunk + head,
      inner gradient clipped to global norm 100 inside the graph, batch size drawn from {12, 24, 48}
      (padded to 48 and masked: one compilation serves every size)
    loss   = CE_desired(released, B) - mean_{k=0..K} calibrated_CE_harmful(attacker_k, B)  [+ grad-norm penalty]
    released <- Adam(clip 10) step on d loss / d released   (exact second-order meta-gradient by default)
    inner lr <- Adam(1e-4) step that makes the attacker *stronger* (ascent on the defence loss), clipped.

The engine (`jaxtar.meta.meta_value_and_grad`) differentiates through the attack with any of its estimators; the
learned lr is passed to it as a differentiable hyper-parameter. The learned attacker head is the harmful column
block of the released head; its gradient is sign-flipped (trained in the attacker's direction) and it shares the
outer optimiser.

Variants: ``MLACConfig.paper()`` (the paper's headline arm: K = 16, calibrated, no gradient-norm penalty; the
penalty ablation's arm adds ``grad_norm_penalty=1.0``), ``MLACConfig.official()`` (the same computed the way the
released code does, ``parity="official"``: see below), ``MLACConfig.ac()`` (adversarial censoring: K = 0, the
learned head is the adversary trained by gradient reversal, plain negated CE) and ``variant="desired"`` (the
desired-task-tuned baseline: CE only).

The gradient-norm penalty (``grad_norm_penalty``) adds ``lambda * ||grad_{trunk, head} CE_harmful||`` of the
attacker at every recorded step k (on the outer batch; averaged over k = 0..K like the harmful CE) to the defence
loss: the defence also flattens the harmful loss the attacker descends. With ``inner_lr_objective="defence"`` its
weight also enters the learned lr's objective (it shares the engine's value).

``MLACConfig.parity = "official"`` (or each switch on its own, `MLACConfig.setting`) computes four things the way the
released code does (docs/mlac.md "Differences from the official code"):

- ``inner_lr_objective="harmful_ce"``: the learned lr descends the mean *uncalibrated* harmful CE of the attacker
  over k = 0..K on the outer batch (its derivative taken in forward mode through a second unroll), clipped to norm
  ``outer_clip_norm``;
- ``inner_clip="detached"``: the inner gradient g is clipped as ``g * c / stop_gradient(||g||)`` when
  ``||g|| = sqrt(1e-8 + sum g^2) > c``: the same update, a different derivative (no term through the norm);
- ``grad_norm_batches="inner"``: the penalty is the mean of K + 1 norms: each inner step's gradient on its own batch
  (``||g||`` above, before clipping) and the outer batch's at the last step k = K;
- ``head_init="torch"``: fresh heads are drawn as torch's ``nn.Linear`` default, U(-1/sqrt(hidden), 1/sqrt(hidden)).

The first three wrap the engine's attack optimiser (`InnerOptimizer`: it clips, and remembers the last norm and
the step count in its state, which the tamper loss reads); the default, ``parity="jaxtar"``, runs exactly the code
it ran before these switches.

The configuration lives in `jaxtar.config.mlac`, the phase run by the shared defence loop in
`jaxtar.defenses.mlac_train`, the whole run in `jaxtar.defenses.mlac_run`.

Example:
    >>> cfg = MLACConfig(inner_steps=2, inner_batch_sizes=(4, 8))
    >>> model, params = prepare_model(model, params, cfg)  # doctest: +SKIP
    >>> f = mlac_value_and_grad(model, cfg)  # doctest: +SKIP
    >>> metrics, grads, lr_grad = f(params, jnp.float32(3e-4), outer_batch, inner_batches,
    ...                             jax.random.key(0))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtar.attacks import AttackProblem
from jaxtar.attacks.optimizers import make_optimizer
from jaxtar.config import MLACConfig
from jaxtar.defenses.mlac_inner import (  # noqa: F401 - re-exported: the attacker's pieces
    InnerOptimizer,
    accumulation_dtype,
    attack_meta_value_and_grad,
    clip_scalar,
    cross_entropy,
    gather,
    harmful_ce_lr_grad,
    inner_adversary,
    inner_batches,
    inner_optimizer,
    official_norm,
)
from jaxtar.meta import Estimator
from jaxtar.models import Model, model_for_config, with_classifier
from jaxtar.objectives.calibration import calibrated_cross_entropy

Params = dict[str, Any]
Arrays = dict[str, jax.Array]


class MLACState(NamedTuple):
    """Outer-loop state: released params, their Adam state, the learned inner lr and its Adam state, step."""

    params: Params
    opt_state: Any
    inner_lr: jax.Array
    lr_opt_state: Any
    step: jax.Array


# ------------------------------------------------------------------------------------------------ model pieces
def prepare_model(model: Model, params: Params, cfg: MLACConfig, *, seed: int = 0) -> tuple[Model, Params]:
    """The released-model layout: a bias-free head with ``cfg.num_labels`` outputs (kept if already there).

    Example:
        >>> from jaxtar.models import BertConfig, create_model
        >>> model, params = prepare_model(*create_model(BertConfig.tiny(), seed=0), MLACConfig())
        >>> params["classifier"]["kernel"].shape, model.config.classifier_bias  # hidden size 64 x 30 labels
        ((64, 30), False)
    """
    c = model.config
    if c.num_labels == cfg.num_labels and not c.classifier_bias and "classifier" in params:
        return model, params
    model, params = with_classifier(model, params, cfg.num_labels, bias=False, seed=seed)
    if cfg.setting("head_init") == "torch":  # torch's nn.Linear default, as the official GoodBadBERT's head
        kernel = params["classifier"]["kernel"]
        params["classifier"] = {"kernel": torch_linear_init(jax.random.key(seed), kernel.shape).astype(kernel.dtype)}
    return model, params


def torch_linear_init(key: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """A [fan_in, fan_out] kernel drawn as torch's ``nn.Linear`` default (``kaiming_uniform_(a=sqrt(5))``):
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (float32).

    Example:
        >>> w = torch_linear_init(jax.random.key(0), (16, 4))
        >>> bool(jnp.abs(w).max() <= 0.25)
        True
    """
    bound = 1.0 / np.sqrt(shape[0])
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def trunk_params(params: Params) -> Params:
    """The encoder without its classifier."""
    return {k: v for k, v in params.items() if k != "classifier"}


def _trunk_model(model: Model) -> Model:
    return model_for_config(dataclasses.replace(model.config, num_labels=0))


def _global_norm(tree: Any) -> jax.Array:
    sq = sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))
    return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)  # finite derivative at 0


def _dtype(cfg: MLACConfig) -> Any:
    """The encoder's compute dtype (None: the weights' own)."""
    return None if cfg.compute_dtype is None else jnp.dtype(cfg.compute_dtype)


def released_logits(model: Model, params: Params, batch: Arrays, cfg: MLACConfig) -> tuple[jax.Array, jax.Array]:
    """(desired logits [B, num_desired], harmful logits [B, num_harmful]) of the released model."""
    pooled = model.apply(params, batch["input_ids"], batch["attention_mask"], dtype=_dtype(cfg)).pooled_output
    kernel = params["classifier"]["kernel"].astype(pooled.dtype)
    logits = jnp.dot(pooled, kernel, preferred_element_type=accumulation_dtype(pooled))  # the port's logits are float32
    return logits[:, : cfg.num_desired], logits[:, cfg.num_desired :]


def mlac_problem(model: Model, cfg: MLACConfig) -> AttackProblem:
    """The simulated attacker as an engine `AttackProblem`: trunk + (fresh or learned) harmful head.

    The defended weights are the released params raveled into one vector and the trainable weights are
    ``{"trunk": encoder params, "head": [D, num_harmful]}`` raveled likewise (``jax.tree.leaves`` order,
    ``ravel_params``); attack batches carry a
    ``weight`` mask (padding of the drawn batch size); the tamper loss is minus the (calibrated) harmful CE.
    """
    return attacker(model, cfg)[0]


def attacker(model: Model, cfg: MLACConfig) -> tuple[AttackProblem, Callable[[jax.Array, Arrays], jax.Array]]:
    """``(problem, logits)``: the attacker (`mlac_problem`) and ``logits(flat trainable, batch)``, its harmful logits.

    With ``cfg.inner_norm_penalty`` (``grad_norm_batches`` "inner") the tamper loss takes the triple the
    `InnerOptimizer` of `inner_optimizer` hands on, ``(weights, last inner gradient norm, steps taken)``.
    """
    trunk_model = _trunk_model(model)
    std = model.config.initializer_range if cfg.head_init_std is None else cfg.head_init_std
    hidden, nd, y_key = model.config.hidden_size, cfg.num_desired, cfg.harmful_key
    # The attacker's weights travel as ONE flat vector: the optimiser (Adam, clipping) then acts on a single leaf,
    # which shrinks the differentiated graph (and XLA compile time) several-fold versus a ~25-leaf pytree.
    head_shape = jax.ShapeDtypeStruct((hidden, cfg.num_harmful), jnp.float32)
    unflatten = _Flat({"trunk": trunk_params(model.abstract_params()), "head": head_shape}).unravel
    released = _Flat(model.abstract_params())

    def logits(flat: jax.Array, batch: Arrays) -> jax.Array:
        t = unflatten(flat)
        pooled = trunk_model.apply(t["trunk"], batch["input_ids"], batch["attention_mask"], dtype=_dtype(cfg))
        pooled = pooled.pooled_output
        return jnp.dot(pooled, t["head"].astype(pooled.dtype), preferred_element_type=accumulation_dtype(pooled))

    def attack_init(defended_flat: jax.Array, key: jax.Array) -> jax.Array:
        defended = released.unravel(defended_flat)
        kernel = defended["classifier"]["kernel"]
        if cfg.head == "learned":
            head = kernel[:, nd:]
        elif cfg.setting("head_init") == "torch":
            head = torch_linear_init(key, (hidden, cfg.num_harmful)).astype(kernel.dtype)
        else:
            head = (std * jax.random.normal(key, (hidden, cfg.num_harmful))).astype(kernel.dtype)
        return ravel_params({"trunk": trunk_params(defended), "head": head})

    def attack_loss(defended: Params, t: Params, batch: Arrays) -> jax.Array:
        return cross_entropy(logits(t, batch), batch[y_key], batch.get("weight"))

    def outer_norm(defended: Params, t: Params, batch: Arrays) -> jax.Array:
        return _global_norm(jax.grad(attack_loss, argnums=1)(defended, t, batch))

    def minus_harm(defended: Params, t: Params, batch: Arrays) -> jax.Array:
        z, y = logits(t, batch), batch[y_key]
        if cfg.calibrate:
            harm = calibrated_cross_entropy(z, y, method=cfg.calibration_method, num_steps=cfg.calibration_steps)
        else:
            harm = cross_entropy(z, y)
        return -harm

    tamper_loss = with_grad_norm_penalty(minus_harm, outer_norm, cfg)
    return AttackProblem(attack_init, attack_loss, tamper_loss), logits


def with_grad_norm_penalty(
    value: Callable[[Params, Any, Arrays], jax.Array],
    outer_norm: Callable[[Params, Any, Arrays], jax.Array],
    cfg: MLACConfig,
) -> Callable[[Params, Any, Arrays], jax.Array]:
    """The tamper loss ``value + grad_norm_penalty * norm`` recorded at k = 0..K (the engine averages the records).

    ``grad_norm_batches`` "outer" (jaxtar): norm = ``outer_norm(defended, attacker_k, outer batch)`` at every k.
    "inner" (official; ``cfg.inner_norm_penalty``): the tamper loss gets ``(attacker_k, ||g_{k-1}||, k)`` from the
    `InnerOptimizer` and adds ``||g_{k-1}||`` (inner step k-1's gradient on its own batch; 0 at k = 0) plus, at
    k = K only, ``outer_norm``: the mean over records is the mean of the K inner norms and the one outer norm.
    """
    if cfg.inner_norm_penalty:

        def tamper(defended: Params, x: Any, batch: Arrays) -> jax.Array:
            t, last_norm, k = x
            zero = lambda *_: jnp.zeros_like(last_norm)
            last = jax.lax.cond(k == cfg.inner_steps, outer_norm, zero, defended, t, batch)
            return value(defended, t, batch) + cfg.grad_norm_penalty * (last_norm + last)

        return tamper

    def tamper_loss(defended: Params, t: Any, batch: Arrays) -> jax.Array:
        loss = value(defended, t, batch)
        if cfg.grad_norm_penalty:
            loss = loss + cfg.grad_norm_penalty * outer_norm(defended, t, batch)
        return loss

    return tamper_loss


def ravel_params(tree: Any) -> jax.Array:
    """All leaves of ``tree`` raveled and concatenated in ``jax.tree.leaves`` order (the engine's view)."""
    return jnp.concatenate([x.reshape(-1) for x in jax.tree.leaves(tree)])


class _Flat:
    """Ravel / unravel between a pytree of a fixed structure and one flat vector (any float dtype)."""

    def __init__(self, abstract: Any) -> None:
        leaves, self.treedef = jax.tree.flatten(abstract)
        self.shapes = [x.shape for x in leaves]
        self.cuts = np.cumsum([int(np.prod(s)) for s in self.shapes])[:-1].tolist()

    def unravel(self, flat: jax.Array) -> Any:
        parts = jnp.split(flat, self.cuts)
        return jax.tree.unflatten(self.treedef, [x.reshape(s) for x, s in zip(parts, self.shapes)])


# ------------------------------------------------------------------------------------------------- outer step
def init_state(params: Params, cfg: MLACConfig) -> MLACState:
    """A fresh outer state for released ``params``."""
    lr = jnp.asarray(cfg.inner_lr, jnp.float32)
    return MLACState(
        params, _outer_opt(cfg).init(params), lr, optax.adam(cfg.inner_lr_lr).init(lr), jnp.zeros((), jnp.int32)
    )


def _outer_opt(cfg: MLACConfig) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(cfg.outer_clip_norm), optax.adam(cfg.outer_lr))


def mlac_value_and_grad(
    model: Model, cfg: MLACConfig
) -> Callable[[Params, jax.Array, Arrays, Arrays, jax.Array], tuple[dict[str, jax.Array], Params, jax.Array]]:
    """``f(params, inner_lr, outer_batch, inner_batches, key) -> (metrics, grads, lr_grad)`` of the defence loss.

    ``grads`` is d loss / d params with the learned-head columns already flipped to the attacker's direction;
    ``lr_grad`` is the gradient to *descend* for a stronger attacker (zero when K = 0 or variant "desired").
    Pure and unjitted (the finite-difference test differentiates exactly this).
    """
    (problem, logits), (adversary, opt) = attacker(model, cfg), inner_optimizer(cfg)
    estimator = Estimator(cfg.estimator, truncation=cfg.truncation)
    released = _Flat(model.abstract_params())
    official_lr = cfg.learn_inner_lr and cfg.setting("inner_lr_objective") == "harmful_ce"
    lr_opt = inner_optimizer(cfg, track=False)[1] or make_optimizer(adversary)

    def desired_loss(flat: jax.Array, batch: Arrays) -> jax.Array:
        desired, harmful = released_logits(model, released.unravel(flat), batch, cfg)
        loss = cross_entropy(desired, batch[cfg.desired_key])
        if cfg.variant == "joint":  # the leaky baseline: trained on both tasks
            return loss + cfg.harmful_weight * cross_entropy(harmful, batch[cfg.harmful_key])
        return loss

    def f(params, inner_lr, outer, inner, key):
        flat = ravel_params(params)  # the engine sees one leaf (see attacker)
        desired_ce, grads = jax.value_and_grad(desired_loss)(flat, outer)
        zero = jnp.zeros((), jnp.float32)
        metrics = {"desired_ce": desired_ce, "harmful_value": zero, "attack_loss_first": zero,
                   "attack_loss_last": zero, "finite": jnp.asarray(True)}  # fmt: skip
        if cfg.variant != "mlac":
            return {**metrics, "loss": desired_ce}, released.unravel(grads), zero
        if cfg.inner_steps == 0:
            tamper = lambda p: problem.tamper_loss(p, problem.attack_init(p, key), outer)
            value, g_harm = jax.value_and_grad(tamper)(flat)
            lr_grad, finite = zero, jnp.isfinite(value)
        else:
            hp = {k: jnp.asarray(v, inner_lr.dtype) for k, v in adversary.hyperparams().items()}
            hp["learning_rate"] = inner_lr
            res = attack_meta_value_and_grad(problem, adversary, opt, flat, inner, outer, key, estimator, hp)
            value, g_harm, finite = res.value, res.grads, res.aux.is_finite
            lr_grad = -res.hyper_grads["learning_rate"] if cfg.learn_inner_lr else zero
            if official_lr:
                lr_grad, lr_finite = harmful_ce_lr_grad(problem, logits, lr_opt, cfg, flat, hp, outer, inner, key)
                finite = finite & lr_finite
            metrics.update(attack_loss_first=res.aux.attack_losses[0], attack_loss_last=res.aux.attack_losses[-1])
        grads = released.unravel(grads + cfg.harmful_weight * g_harm)
        if cfg.head == "learned":  # the attacker's head init is trained in the attacker's direction
            kernel = grads["classifier"]["kernel"]
            grads["classifier"]["kernel"] = kernel.at[:, cfg.num_desired :].multiply(-1.0)
        loss = desired_ce + cfg.harmful_weight * value
        return {**metrics, "loss": loss, "harmful_value": value, "finite": finite}, grads, lr_grad

    return f


def make_outer_step(
    model: Model, cfg: MLACConfig, *, compiler_options: dict | None = None
) -> Callable[[MLACState, Arrays, jax.Array], tuple[MLACState, dict]]:
    """The jitted outer step ``step(state, train_arrays, key) -> (state, metrics)`` (batches drawn inside).

    ``train_arrays`` holds ``input_ids``, ``attention_mask`` [N, T] and the two label vectors [N].
    """
    return jax.jit(outer_step(model, cfg), compiler_options=compiler_options)


def outer_step(model: Model, cfg: MLACConfig) -> Callable[[MLACState, Arrays, jax.Array], tuple[MLACState, dict]]:
    """The outer step of :func:`make_outer_step`, not jitted (to compose into a larger jitted function)."""
    f, opt, lr_opt = mlac_value_and_grad(model, cfg), _outer_opt(cfg), optax.adam(cfg.inner_lr_lr)
    low, high = cfg.inner_lr_bounds

    def step(state: MLACState, data: Arrays, key: jax.Array) -> tuple[MLACState, dict]:
        k_out, k_in, k_att = jax.random.split(key, 3)
        n = data["input_ids"].shape[0]
        outer = gather(data, jax.random.choice(k_out, n, (cfg.outer_batch_size,), replace=n < cfg.outer_batch_size))
        inner = inner_batches(data, k_in, cfg) if cfg.inner_steps else None
        metrics, grads, lr_grad = f(state.params, state.inner_lr, outer, inner, k_att)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        lr_update, lr_state = lr_opt.update(lr_grad, state.lr_opt_state, state.inner_lr)
        inner_lr = jnp.clip(optax.apply_updates(state.inner_lr, lr_update), low, high)
        metrics = {**metrics, "inner_lr": state.inner_lr, "grad_norm": optax.global_norm(grads)}
        return MLACState(params, opt_state, inner_lr, lr_state, state.step + 1), metrics

    return step
