"""The one defence training loop: phases of jitted steps with checkpoints, resume, signals, mesh placement, logs,
divergence checks and best-validation selection. TAR, random mapping and MLAC are all phases run by it.

A run is one or more :class:`Phase` s over one global step counter (TAR then SFT; MLAC's warm-up then MLAC). Each
step calls the phase's jitted, pure ``step(params, opt_state, batches, key, frozen)`` with batches and a key derived
from ``(seed, step)`` only, so a run resumed from a checkpoint (even after ``kill -9``) reaches bit-identical
parameters to an uninterrupted one. A phase with a ``validate`` hook is validated at its start, every
``validate_every`` steps and at its end; with ``select`` the best-scoring weights (kept in the checkpoints, so a
resumed run selects the same) are what the phase hands on and exports.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxtar.checkpoint import Checkpointer, RunDir
from jaxtar.config import RunConfig
from jaxtar.defenses._run_log import MetricsLog, Signals, last_record, progress_bar, write_result
from jaxtar.defenses._steps import (  # noqa: F401 - re-exported: the step pieces the loop runs
    cached_step,
    check_divides,
    jit_step,
    place,
    schedule_free_adamw,
    schedule_free_params,
    shard_batches,
    step_key,
)
from jaxtar.errors import DivergedError, InputError
from jaxtar.parallel import (
    any_process,
    is_main_process,
    param_shardings,
    replicated,
    shard,
    to_host,
)

PyTree = Any


@dataclass(frozen=True)
class Phase:
    """One stretch of training with one step function and optimiser.

    Attributes:
        name: "tar", "sft", "random_mapping", "warmup", "mlac".
        stop: global step at which the phase ends (it starts where the previous one stopped).
        step_fn: jitted ``(params, opt_state, batches, key, frozen) -> (params, opt_state, metrics)``.
        batches_fn: ``step -> batches`` (numpy or device arrays, or lazy `jaxtar.data.rows.TableRows` row columns),
            a function of the step only.
        init_opt_state: ``params -> opt_state`` (fresh state when the phase starts).
        export_params: ``(params, opt_state) -> params`` to hand on / export (schedule-free: the x average).
        tokens_per_step: token positions processed per step (for throughput).
        batch_axes: on a mesh, ``role -> (batch axis, adversary axis or None)`` of the batches' roles; a role not
            listed has its batch axis first and no adversary axis.
        predicted_bytes: the memory planner's peak for one step (`jaxtar.defenses._fit`; None = no estimate).
        validate: ``(params, opt_state) -> metrics`` (a dict of scalars, named ``val_*`` by convention), logged
            at the phase's start, every ``validate_every`` steps and at its end.
        validate_every: steps between validations (0: only at the start and the end).
        select: a metric of ``validate`` to minimise: the phase then hands on and exports the weights of its best
            validation (non-finite scores never win; the first of equal scores does).
        on_end: called with the weights the phase hands on when it completes (e.g. write a baseline export); a run
            resumed from the phase's last checkpoint calls it again, so it must be idempotent.
    """

    name: str
    stop: int
    step_fn: Callable
    batches_fn: Callable[[int], PyTree]
    init_opt_state: Callable[[PyTree], PyTree]
    export_params: Callable[[PyTree, PyTree], PyTree] = lambda params, opt_state: params
    tokens_per_step: int = 0
    batch_axes: Mapping[str, tuple[int, int | None]] = field(default_factory=dict)
    predicted_bytes: int | None = None
    validate: Callable[[PyTree, PyTree], Mapping[str, Any]] | None = None
    validate_every: int = 0
    select: str | None = None
    on_end: Callable[[PyTree], None] | None = None

    def __post_init__(self) -> None:
        if self.select is not None and self.validate is None:
            raise ValueError(f"phase {self.name!r}: select={self.select!r} needs a validate hook")


class Selected(NamedTuple):
    """The best validation of a phase with ``select``: its global step and score (+inf when none was finite:
    then the phase's start weights and step)."""

    step: int
    score: float

    def to_json(self) -> dict[str, Any]:
        """Strict JSON: a non-finite score is null."""
        return {"step": self.step, "score": self.score if math.isfinite(self.score) else None}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Selected:
        return cls(int(value["step"]), math.inf if value["score"] is None else float(value["score"]))


class LoopResult(NamedTuple):
    """What `run_phases` returns: the exported weights, completed steps, whether a signal stopped it, the last
    metrics line, each selecting phase's best validation, the last phase's final optimiser state, and the wall time
    this process spent in the loop."""

    params: PyTree
    steps: int
    interrupted: bool
    metrics: dict[str, Any]
    selected: dict[str, Selected]
    final_opt_state: PyTree = None
    seconds: float = 0.0


def _scalars(metrics: PyTree) -> dict[str, float]:
    return {k: float(v) for k, v in to_host(metrics).items()}


class _NoLog:
    """The metrics log of processes other than process 0 (which alone writes the run folder)."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _state(params: PyTree, opt_state: PyTree, best: PyTree | None) -> dict[str, PyTree]:
    return {"params": params, "opt_state": opt_state, **({"best": best} if best is not None else {})}


def _fresh_best(params: PyTree, start: int = 0) -> dict[str, PyTree]:
    """The selection state of a phase before its first validation: its start weights and step, score +inf (kept
    when no validation is finite)."""
    return {"params": _copy(params), "score": jnp.asarray(jnp.inf, jnp.float32), "step": jnp.asarray(start, jnp.int32)}


def _copy(params: PyTree) -> PyTree:
    """Weights kept past the next step (the best so far), which donates the current ones (`jit_step`)."""
    return jax.tree.map(lambda x: x.copy(), params)


def _restore(
    ckpt: Checkpointer, phases: list[Phase], params0: PyTree, mesh: Mesh | None
) -> tuple[int, int, PyTree, PyTree, PyTree | None, dict[str, Selected]]:
    """(phase index, completed steps, params, opt_state, best, earlier phases' selections) from the newest
    checkpoint, placed for this run (on
    ``mesh``, or on the default device: a run may resume on another mesh than it was saved from)."""
    step = ckpt.latest_step()
    meta = ckpt.restore_meta(step)
    names = [p.name for p in phases]
    if meta.get("phase") not in names:
        raise InputError(f"checkpoint {step} belongs to phase {meta.get('phase')!r}, this run has {names}")
    index = names.index(meta["phase"])
    phase = phases[index]
    target = jax.eval_shape(
        lambda p: _state(p, phase.init_opt_state(p), _fresh_best(p) if phase.select else None), params0
    )
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: one, target) if mesh is None else param_shardings(target, mesh)
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target, shardings)
    state, meta = ckpt.restore(step, target)
    selected = {name: Selected.from_json(value) for name, value in meta.get("selected", {}).items()}
    return index, int(meta["step"]), state["params"], state["opt_state"], state.get("best"), selected


def _handed_on(phase: Phase, params: PyTree, opt_state: PyTree, best: PyTree | None) -> PyTree:
    return best["params"] if phase.select else phase.export_params(params, opt_state)


def run_phases(
    phases: list[Phase], params0: PyTree, frozen: PyTree, run_dir: RunDir, run: RunConfig, mesh: Mesh | None = None
) -> LoopResult:
    """Runs (or resumes) the phases; returns a :class:`LoopResult`.

    ``params0`` are the starting weights (also the restore target's shapes); ``frozen`` is passed to every step
    unchanged (TAR: the same ``params0`` arrays, the frozen base model — no second copy). With a ``mesh`` params,
    optimiser state and ``frozen`` are FSDP-sharded and each step's batches placed by `shard_batches`.

    Across processes (a ``mesh`` over every process's devices) every process runs the same steps on global arrays
    and saves / restores the checkpoints together (orbax multi-host); process 0 alone writes ``metrics.jsonl``,
    ``result.json`` and the progress bar, and a signal to any process stops all of them at the same step.

    Raises:
        DivergedError: a step produced a non-finite loss, weight or optimiser state (nothing of it is saved).
        InputError: the folder's run has more steps done than ``phases`` ask for.
    """
    t_start = time.perf_counter()
    main = is_main_process()
    ckpt = Checkpointer(run_dir.checkpoint_dir, max_to_keep=run.keep_checkpoints)
    index, step, best = 0, 0, None
    selected: dict[str, Selected] = {}
    total = phases[-1].stop
    if run_dir.resumed and ckpt.latest_step() is not None:
        index, step, params, opt_state, best, selected = _restore(ckpt, phases, params0, mesh)
        if step > phases[index].stop:
            ckpt.close()
            asked = "steps" if index == len(phases) - 1 else f"steps of its {phases[index].name} phase"
            raise InputError(
                f"{run_dir.path} has {step} steps done, more than the {phases[index].stop} {asked} asked for; "
                f"resume with at least as many (nothing was changed)"
            )
        if main:
            print(f"resumed from step {step} ({phases[index].name})", file=sys.stderr)
        validated_at_start = True
    else:
        params = jax.tree.map(lambda x: x.copy(), params0)  # trained separately from the frozen base
        opt_state = phases[0].init_opt_state(params)
        validated_at_start = False
    params, opt_state, frozen = place(params, mesh), place(opt_state, mesh), place(frozen, mesh)
    best = place(best, mesh)
    log = (
        MetricsLog(run_dir.metrics_path, step, run.tensorboard, phases[index].name if validated_at_start else None)
        if main
        else _NoLog()
    )
    multiprocess = mesh is not None and jax.process_count() > 1
    last: dict[str, Any] = last_record(run_dir.metrics_path) if step >= total else {}
    interrupted = False
    loss = None  # the last step's "loss" metric (checked with the weights)
    checked = step  # weights are known finite up to here

    def check_finite() -> None:
        """Raises `DivergedError` when the loss, weights or optimiser state are not finite (checked at every log
        step, validation and save: non-finite weights stay non-finite, so nothing is missed in between)."""
        nonlocal checked
        if checked == step:
            return
        if not bool(_all_finite((params, opt_state, loss))):
            kept = ckpt.latest_step()
            when = f"step {step}" if step - checked == 1 else f"a step in {checked + 1}..{step}"
            raise DivergedError(
                f"{phases[index].name} diverged: non-finite loss, weights or optimiser state at {when}; "
                f"stopped, nothing exported, last finite checkpoint: {'none' if kept is None else f'step {kept}'} in "
                f"{run_dir.checkpoint_dir}. Lower the learning rate (or clip gradients) and start a new run folder"
            )
        checked = step

    def save(phase: Phase) -> None:
        check_finite()
        done = {name: s.to_json() for name, s in selected.items()}  # earlier phases' choices, for a resume
        ckpt.save(step, _state(params, opt_state, best), {"phase": phase.name, "step": step, "selected": done})

    def validate(phase: Phase) -> None:
        nonlocal best
        values = _scalars(phase.validate(params, opt_state))
        log.write({"step": step, "phase": phase.name, "validation": True, **values})
        if phase.select is not None:
            score = values[phase.select]
            if math.isfinite(score) and score < float(best["score"]):
                chosen = {
                    "params": _copy(params),
                    "score": jnp.asarray(score, jnp.float32),
                    "step": jnp.asarray(step, jnp.int32),
                }
                best = place(chosen, mesh)

    try:
        with Signals() as signals, progress_bar(total, step, run.progress and main, phases[index].name) as bar:

            def stop_requested() -> bool:  # agreed by every process (a collective when there are several)
                return any_process(signals.received is not None)

            while index < len(phases):
                phase = phases[index]
                start = phases[index - 1].stop if index else 0
                bar.set_description(phase.name)
                if phase.select is not None and best is None:
                    best = place(_fresh_best(params, start), mesh)
                if phase.validate is not None and step == start and not validated_at_start:
                    validate(phase)
                validated_at_start = False
                t_prev = time.perf_counter()
                while step < phase.stop and not stop_requested():
                    batches = phase.batches_fn(step)
                    batches = shard_batches(batches, mesh, phase.batch_axes)  # each process reads its shards only
                    key = step_key(run.seed, step)
                    if multiprocess:
                        key = shard(key, replicated(mesh))
                    step_fn = getattr(phase.step_fn, "donating", phase.step_fn)  # in place where it can
                    params, opt_state, metrics = step_fn(params, opt_state, batches, key, frozen)
                    step += 1
                    loss = metrics.get("loss") if isinstance(metrics, Mapping) else None
                    if step % run.log_every == 0 or step == phase.stop:
                        values = _scalars(metrics)  # waits for the step
                        now = time.perf_counter()
                        dt = max(now - t_prev, 1e-9) / (run.log_every if step % run.log_every == 0 else 1)
                        t_prev = now
                        last = {"step": step, "phase": phase.name, **values, "step_time_s": dt}
                        if phase.tokens_per_step:
                            last["tokens_per_s"] = phase.tokens_per_step / dt
                        log.write(last)
                        shown = {k: f"{v:.4g}" for k, v in values.items() if k in _SHOWN}
                        if phase.tokens_per_step:
                            shown["tok/s"] = f"{phase.tokens_per_step / dt:.3g}"
                        bar.set_postfix(shown, refresh=False)
                        check_finite()  # after logging, so metrics.jsonl shows the diverged step
                    bar.update(1)
                    if phase.validate is not None and (
                        step == phase.stop or (phase.validate_every and (step - start) % phase.validate_every == 0)
                    ):
                        check_finite()  # never select non-finite weights
                        validate(phase)
                    if step % run.checkpoint_every == 0 or step == phase.stop:
                        save(phase)
                if step < total and stop_requested():
                    save(phase)
                    interrupted = True
                    break
                handed = _handed_on(phase, params, opt_state, best)
                if phase.select is not None:
                    selected[phase.name] = Selected(int(best["step"]), float(best["score"]))
                if phase.on_end is not None:
                    phase.on_end(handed)
                if index + 1 < len(phases):  # hand the exported weights to the next phase, fresh optimiser
                    params = place(handed, mesh)
                    opt_state = place(phases[index + 1].init_opt_state(params), mesh)
                    best = None
                index += 1
    finally:
        ckpt.close()
        log.close()
    if interrupted:
        return LoopResult(params, step, True, last, selected, opt_state, time.perf_counter() - t_start)
    final = _handed_on(phases[-1], params, opt_state, best)
    result = {"complete": True, "steps": step, "metrics": last}
    if selected:
        result["selected"] = {name: s.to_json() for name, s in selected.items()}
    if main:
        write_result(run_dir.path, result)  # a resumed, finished run is reported unchanged
    return LoopResult(final, step, False, last, selected, opt_state, time.perf_counter() - t_start)


@jax.jit
def _all_finite(tree: PyTree) -> jax.Array:
    """Whether every float of ``tree`` (weights, optimiser state, the loss) is finite, as a device bool."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.bool_(True)


_SHOWN = ("loss", "tamper_loss", "retain_ce", "representation", "random_mapping", "sft_ce", "attack_final")
