"""MLAC's training loop: validation with simulated attacks and the best-validation checkpoint.

Example (``model``, ``params``: `jaxtar.defenses.mlac.prepare_model`'s layout):
    >>> cfg = MLACConfig(inner_steps=2, outer_steps=4, eval_every=2, inner_batch_sizes=(4, 8), outer_batch_size=4)
    >>> result = train_mlac(model, params, train_arrays, val_arrays, cfg)  # doctest: +SKIP
    >>> result.best_step, result.history[-1]["val_score"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxtar.attacks import unroll
from jaxtar.defenses.mlac import (
    MLACState,
    _attacker,
    _ce,
    _inner_batches,
    init_state,
    inner_adversary,
    make_outer_step,
    ravel_params,
    released_logits,
)
from jaxtar.mlac_config import MLACConfig
from jaxtar.models import Model

Params = dict[str, Any]
Arrays = dict[str, jax.Array]


class MLACResult(NamedTuple):
    """``best_params`` (best validation score), the final state, the history of validations, best step/score."""

    best_params: Params
    state: MLACState
    history: list[dict[str, Any]]
    best_step: int
    best_score: float


# ------------------------------------------------------------------------------------------------- validation
def make_validator(
    model: Model, cfg: MLACConfig, *, compiler_options: dict | None = None
) -> Callable[[Params, jax.Array, Arrays], dict[str, jax.Array]]:
    """``validate(params, inner_lr, val_arrays) -> metrics``: desired CE / accuracy of the released head, and
    ``cfg.val_attacks`` simulated attacks (fixed keys) with their mean calibrated harmful CE over k = 0..K and
    final attacker accuracy. ``score`` (lower is better) = desired CE - harmful_weight * mean harmful CE for
    ``mlac``; desired CE + harmful_weight * the released harmful head's CE for ``joint`` (its own training loss,
    with that head's accuracy reported); desired CE for ``desired``.
    """
    problem, logits = _attacker(model, dataclasses.replace(cfg, grad_norm_penalty=0.0))
    adversary = inner_adversary(cfg)
    y = cfg.harmful_key

    def attack(params, inner_lr, val, key):
        flat = ravel_params(params)
        t0 = problem.attack_init(flat, key)
        accuracy = lambda t: jnp.mean(jnp.argmax(logits(t, val), -1) == val[y])
        record = lambda d, t: (-problem.tamper_loss(d, t, val), accuracy(t))
        if cfg.inner_steps == 0:
            return jax.tree.map(lambda x: x[None], record(flat, t0))
        hp = {k: jnp.asarray(v, jnp.float32) for k, v in adversary.hyperparams().items()}
        hp["learning_rate"] = inner_lr
        res = unroll(problem, flat, adversary, _inner_batches(val, key, cfg), key=key, hyperparams=hp,
                     record_every=1, include_initial=True, record_fn=record)  # fmt: skip
        return res.records

    @functools.partial(jax.jit, compiler_options=compiler_options)
    def validate(params: Params, inner_lr: jax.Array, val: Arrays) -> dict[str, jax.Array]:
        desired, harmful = released_logits(model, params, val, cfg)
        out = {"val_desired_ce": _ce(desired, val[cfg.desired_key]),
               "val_desired_acc": jnp.mean(jnp.argmax(desired, -1) == val[cfg.desired_key])}  # fmt: skip
        if cfg.variant == "desired":
            return {**out, "val_score": out["val_desired_ce"]}
        if cfg.variant == "joint":  # scored by its own training loss
            out.update(val_released_harmful_ce=_ce(harmful, val[y]),
                       val_released_harmful_acc=jnp.mean(jnp.argmax(harmful, -1) == val[y]))  # fmt: skip
            return {**out, "val_score": out["val_desired_ce"] + cfg.harmful_weight * out["val_released_harmful_ce"]}
        keys = jax.random.split(jax.random.key(cfg.seed + 1), cfg.val_attacks)
        harm_ce, acc = jax.vmap(lambda k: attack(params, inner_lr, val, k))(keys)  # [A, K+1]
        out.update(val_harmful_ce=jnp.mean(harm_ce), val_attacker_acc=jnp.mean(acc[:, -1]))
        return {**out, "val_score": out["val_desired_ce"] - cfg.harmful_weight * out["val_harmful_ce"]}

    return validate


# ------------------------------------------------------------------------------------------------- training loop
def train_mlac(
    model: Model,
    params: Params,
    train: dict[str, np.ndarray],
    val: dict[str, np.ndarray],
    cfg: MLACConfig,
    *,
    log: Callable[[dict[str, Any]], None] | None = None,
    compiler_options: dict | None = None,
    progress: bool = False,
) -> MLACResult:
    """Run ``cfg.outer_steps`` outer steps, validating at step 0, every ``cfg.eval_every`` steps and at the end;
    the parameters with the best (lowest) validation score are returned.

    Args:
        model: the released model (``prepare_model`` layout).
        params: its starting parameters.
        train: arrays ``input_ids``, ``attention_mask`` [N, T] and the label vectors (defence data).
        val: the same for checkpoint selection (a held-out part of the defence data, not the attacker's splits).
        cfg: the run's hyper-parameters.
        log: called with each validation record (a dict of floats).
        compiler_options: XLA options for the two jitted functions (``{"xla_backend_optimization_level": 0}``
            halves compile time on CPU at some cost per step: tests and tiny demos).
        progress: show a tqdm progress bar.

    Returns:
        MLACResult(best_params, final state, history, best_step, best_score).
    """
    _check_arrays(model, train, cfg, "train")
    _check_arrays(model, val, cfg, "val")
    train_d = {k: jnp.asarray(train[k]) for k in ("input_ids", "attention_mask", cfg.desired_key, cfg.harmful_key)}
    val_d = {k: jnp.asarray(val[k]) for k in train_d}
    step = make_outer_step(model, cfg, compiler_options=compiler_options)
    validate = make_validator(model, cfg, compiler_options=compiler_options)
    state, key = init_state(params, cfg), jax.random.key(cfg.seed)
    history: list[dict[str, Any]] = []
    best = (float("inf"), 0, params)
    window: list[dict] = []
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(
        total=cfg.outer_steps, disable=not progress, desc=f"mlac ({cfg.variant})", unit="step", dynamic_ncols=True
    )
    for i in range(cfg.outer_steps + 1):
        if i % cfg.eval_every == 0 or i == cfg.outer_steps:
            record = {"step": i, **{k: float(v) for k, v in validate(state.params, state.inner_lr, val_d).items()}}
            if window:
                stacked = jax.device_get(window)
                record.update({f"train_{k}": float(np.mean([m[k] for m in stacked])) for k in stacked[0]})
                window = []
            record["inner_lr"], record["seconds"] = float(state.inner_lr), time.perf_counter() - t0
            history.append(record)
            if log is not None:
                log(record)
            if np.isfinite(record["val_score"]) and record["val_score"] < best[0]:
                best = (record["val_score"], i, state.params)
        if i == cfg.outer_steps:
            break
        state, metrics = step(state, train_d, jax.random.fold_in(key, i))
        window.append(metrics)
        bar.update(1)
    bar.close()
    return MLACResult(best[2], state, history, best[1], best[0])


def _check_arrays(model: Model, arrays: dict[str, np.ndarray], cfg: MLACConfig, name: str) -> None:
    needed = ("input_ids", "attention_mask", cfg.desired_key, cfg.harmful_key)
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise ValueError(f"{name} arrays lack {missing} (have {sorted(arrays)})")
    n, t = np.shape(arrays["input_ids"])
    if n < 2:
        raise ValueError(f"{name} needs at least 2 examples, got {n}")
    if t > model.config.max_position_embeddings:
        raise ValueError(
            f"{name} sequences ({t}) exceed max_position_embeddings {model.config.max_position_embeddings}"
        )
    for key, classes in ((cfg.desired_key, cfg.num_desired), (cfg.harmful_key, cfg.num_harmful)):
        labels = np.asarray(arrays[key])
        if labels.shape != (n,) or labels.min() < 0 or labels.max() >= classes:
            raise ValueError(f"{name}[{key!r}] must be {n} labels in [0, {classes}), got shape {labels.shape} "
                             f"range [{labels.min()}, {labels.max()}]")  # fmt: skip
    if model.config.num_labels != cfg.num_labels or model.config.classifier_bias:
        raise ValueError(f"the model needs a bias-free head with {cfg.num_labels} outputs (prepare_model), got "
                         f"num_labels={model.config.num_labels}, bias={model.config.classifier_bias}")  # fmt: skip
