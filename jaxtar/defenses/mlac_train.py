"""MLAC's training loop: validation with simulated attacks and the best-validation checkpoint.

Example (``model``, ``params``: `jaxtar.defenses.mlac.prepare_model`'s layout):
    >>> cfg = MLACConfig(inner_steps=2, outer_steps=4, eval_every=2, inner_batch_sizes=(4, 8), outer_batch_size=4)
    >>> result = train_mlac(model, params, train_arrays, val_arrays, cfg)  # doctest: +SKIP
    >>> result.best_step, result.history[-1]["val_score"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxtar.attacks import unroll
from jaxtar.checkpoint import open_run_dir
from jaxtar.config import MLACConfig, RunConfig
from jaxtar.data.rows import take_rows
from jaxtar.defenses._loop import Phase, jit_step, run_phases
from jaxtar.defenses._run_log import read_metrics_lines
from jaxtar.defenses._steps import place_batch
from jaxtar.defenses.mlac import (
    MLACState,
    attacker,
    cross_entropy,
    init_state,
    inner_adversary,
    inner_batches,
    outer_step,
    ravel_params,
    released_logits,
)
from jaxtar.models import Model

Params = dict[str, Any]
Arrays = dict[str, jax.Array]


class MLACResult(NamedTuple):
    """``best_params`` (best validation score), the history of validations, best step / score, final inner lr."""

    best_params: Params
    history: list[dict[str, Any]]
    best_step: int
    best_score: float
    final_inner_lr: float


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
    problem, logits = attacker(model, dataclasses.replace(cfg, grad_norm_penalty=0.0))
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
        res = unroll(problem, flat, adversary, inner_batches(val, key, cfg), key=key, hyperparams=hp,
                     record_every=1, include_initial=True, record_fn=record)  # fmt: skip
        return res.records

    @functools.partial(jax.jit, compiler_options=compiler_options)
    def validate(params: Params, inner_lr: jax.Array, val: Arrays) -> dict[str, jax.Array]:
        desired, harmful = released_logits(model, params, val, cfg)
        out = {"val_desired_ce": cross_entropy(desired, val[cfg.desired_key]),
               "val_desired_acc": jnp.mean(jnp.argmax(desired, -1) == val[cfg.desired_key])}  # fmt: skip
        if cfg.variant == "desired":
            return {**out, "val_score": out["val_desired_ce"]}
        if cfg.variant == "joint":  # scored by its own training loss
            out.update(val_released_harmful_ce=cross_entropy(harmful, val[y]),
                       val_released_harmful_acc=jnp.mean(jnp.argmax(harmful, -1) == val[y]))  # fmt: skip
            return {**out, "val_score": out["val_desired_ce"] + cfg.harmful_weight * out["val_released_harmful_ce"]}
        keys = jax.random.split(jax.random.key(cfg.seed + 1), cfg.val_attacks)
        harm_ce, acc = jax.vmap(lambda k: attack(params, inner_lr, val, k))(keys)  # [A, K+1]
        out.update(val_harmful_ce=jnp.mean(harm_ce), val_attacker_acc=jnp.mean(acc[:, -1]))
        return {**out, "val_score": out["val_desired_ce"] - cfg.harmful_weight * out["val_harmful_ce"]}

    return validate


# ------------------------------------------------------------------------------------------------- the phase
class DefenceSet(NamedTuple):
    """A set of rows placed once (:func:`place_defence_set`): its device arrays, rows padded to the mesh, and the
    number of real rows."""

    arrays: Arrays
    rows: int


def place_defence_set(
    model: Model, columns: dict[str, Any], cfg: MLACConfig, mesh: Any = None, *, name: str = "train"
) -> DefenceSet:
    """The defence set (or its validation part, ``name="val"``) checked and placed once, as the loop places a step's
    batches, so the loop finds it in place at every step: on a mesh its rows are split across data x fsdp (padded
    to a multiple with copies of row 0, which no step or validation reads); each process fills only its own
    shards, and token columns made on demand (`jaxtar.data.bios_tokens.encode_bios_lazily`) are tokenised only
    there. Phases given the same `DefenceSet` (MLAC's warm-up and its MLAC phase) share one device copy.

    Example:
        >>> data = place_defence_set(model, train_arrays, cfg, mesh)  # doctest: +SKIP
        >>> val = place_defence_set(model, val_arrays, cfg, mesh, name="val")  # doctest: +SKIP
        >>> warmup, main = mlac_phase(model, data, val, warm_cfg), mlac_phase(model, data, val, cfg)  # doctest: +SKIP
    """
    _check_arrays(model, columns, cfg, name)
    keys = _columns(cfg)
    n = int(np.shape(columns["input_ids"])[0])
    rows = _padded_rows(n, mesh)
    arrays = place_batch({k: take_rows(columns[k], rows) for k in keys}, mesh)
    if mesh is None:
        arrays = {k: jnp.asarray(v) for k, v in arrays.items()}
    return DefenceSet(arrays, n)


def mlac_phase(
    model: Model,
    train: dict[str, np.ndarray] | DefenceSet,
    val: dict[str, np.ndarray] | DefenceSet,
    cfg: MLACConfig,
    *,
    name: str = "mlac",
    start: int = 0,
    compiler_options: dict | None = None,
    on_end: Callable[[Params], None] | None = None,
    mesh: Any = None,
) -> Phase:
    """MLAC's outer steps as a phase of the one defence loop (`jaxtar.defenses._loop.run_phases`): steps
    ``start .. start + cfg.outer_steps``, validated (`make_validator`) at its start, every ``cfg.eval_every`` steps
    and at its end, handing on the best-validation weights.

    The optimiser state the loop keeps is ``(outer Adam state, inner lr, its Adam state, phase step)``; each step's
    key is ``fold_in(key(cfg.seed), phase step)``, so a resumed run draws exactly what an uninterrupted one does.

    Args:
        model: the released model (``prepare_model`` layout).
        train: arrays ``input_ids``, ``attention_mask`` [N, T] (or those columns made on demand) and the label
            vectors (defence data), or that set already placed (:func:`place_defence_set`; phases that share it
            share one device copy).
        val: the same for checkpoint selection (a held-out part of the defence data, not the attacker's splits),
            or that set placed (``place_defence_set(..., name="val")``).
        cfg: the run's hyper-parameters.
        name: the phase's name (``warmup`` for the desired-only warm-up).
        start: the global step the phase starts at.
        compiler_options: XLA options for the step and the validator (``{"xla_backend_optimization_level": 0}``
            halves compile time on CPU at some cost per step: tests and tiny demos).
        on_end: called with the best weights when the phase completes.
        mesh: the run's mesh (see :func:`place_defence_set`).
    """
    if not isinstance(train, DefenceSet):
        train = place_defence_set(model, train, cfg, mesh)
    if not isinstance(val, DefenceSet):
        val = place_defence_set(model, val, cfg, mesh, name="val")
    keys = _columns(cfg)
    for placed in (train, val):
        if missing := [k for k in keys if k not in placed.arrays]:
            raise ValueError(f"a placed defence set lacks {missing} (have {sorted(placed.arrays)})")
    train_d, n = {k: train.arrays[k] for k in keys}, train.rows
    val_d = {k: val.arrays[k][: val.rows] for k in keys}  # without the padding rows
    step = outer_step(model, cfg)
    validate = make_validator(model, cfg, compiler_options=compiler_options)
    key0 = jax.random.key(cfg.seed)

    def loop_step(params, opt_state, batches, key, frozen):
        del key, frozen  # MLAC's key comes from its own seed and phase step (as the paper's code draws)
        state = MLACState(params, *opt_state)
        data = {k: v[:n] for k, v in batches.items()}  # the defence set without its padding rows
        state, metrics = step(state, data, jax.random.fold_in(key0, state.step))
        return state.params, tuple(state[1:]), metrics

    def check(params, opt_state) -> dict[str, jax.Array]:
        return {**validate(params, opt_state[1], val_d), "inner_lr": opt_state[1]}

    return Phase(
        name,
        start + cfg.outer_steps,
        jit_step(loop_step, compiler_options=compiler_options, mesh=mesh),
        lambda _: train_d,  # the whole defence set on device; each step draws its batches from it
        lambda params: tuple(init_state(params, cfg)[1:]),
        validate=check,
        validate_every=cfg.eval_every,
        select="val_score",
        on_end=on_end,
    )


def train_mlac(
    model: Model,
    params: Params,
    train: dict[str, np.ndarray],
    val: dict[str, np.ndarray],
    cfg: MLACConfig,
    *,
    output_dir: str | Path | None = None,
    compiler_options: dict | None = None,
    progress: bool = False,
) -> MLACResult:
    """One MLAC phase run through the defence loop: ``cfg.outer_steps`` outer steps, validating at step 0, every
    ``cfg.eval_every`` steps and at the end; the weights of the best (lowest) validation score are returned.

    Args:
        model, params: the released model (``prepare_model`` layout) and its starting weights.
        train, val: defence data and its held-out part for checkpoint selection (see :func:`mlac_phase`).
        cfg: the run's hyper-parameters.
        output_dir: a new run folder for its checkpoints and ``metrics.jsonl``; None = a temporary one.
        compiler_options: see :func:`mlac_phase`.
        progress: show a progress bar.

    Returns:
        MLACResult(best_params, history of validations, best step and score, final inner lr).
    """
    phase = mlac_phase(model, train, val, cfg, compiler_options=compiler_options)
    run = RunConfig(checkpoint_every=max(cfg.outer_steps, 1), progress=progress, tensorboard=False)
    with contextlib.ExitStack() as stack:
        if output_dir is None:
            output_dir = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "run"
        run_dir = stack.enter_context(open_run_dir(output_dir, {"method": "mlac", "mlac": dataclasses.asdict(cfg)}))
        result = run_phases([phase], params, None, run_dir, run)
        if result.interrupted:  # Ctrl-C: nothing to return (a temporary folder's checkpoint goes with it)
            raise KeyboardInterrupt(f"train_mlac interrupted after {result.steps} steps")
        history = [json.loads(line) for line in read_metrics_lines(run_dir.metrics_path)]
    history = [r for r in history if "val_score" in r]
    chosen = result.selected[phase.name]
    return MLACResult(result.params, history, chosen.step, chosen.score, history[-1]["inner_lr"])


def _padded_rows(n: int, mesh: Any) -> np.ndarray:
    """Row indices ``0..n-1`` padded with 0s to a multiple of the mesh's data x fsdp devices (``n`` without one)."""
    split = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    return np.concatenate([np.arange(n), np.zeros(-n % split, np.int64)])


def _columns(cfg: MLACConfig) -> tuple[str, ...]:
    """The columns a step and the validator read: tokens, mask and the two label vectors."""
    return ("input_ids", "attention_mask", cfg.desired_key, cfg.harmful_key)


def _check_arrays(model: Model, arrays: dict[str, np.ndarray], cfg: MLACConfig, name: str) -> None:
    missing = [k for k in _columns(cfg) if k not in arrays]
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
