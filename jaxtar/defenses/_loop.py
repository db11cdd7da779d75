"""The defence training loop shared by TAR and random mapping: phases of jitted steps, progress bars, metrics,
checkpoints, signals and resume.

A run is one or more :class:`Phase` s (TAR, then the refusal setting's SFT) over one global step counter. Each step
calls the phase's jitted, pure ``step(params, opt_state, batches, key, frozen)`` with batches and a key derived
from ``(seed, step)`` only, so a run resumed from a checkpoint (even after ``kill -9``) reaches bit-identical
parameters to an uninterrupted one.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxtar.checkpoint import Checkpointer, RunDir, open_run_dir, write_json_atomic, write_text_atomic
from jaxtar.config import DefenceConfig, RunConfig, save_config
from jaxtar.defenses._fit import check_memory, check_positions
from jaxtar.defenses._inputs import (
    InputError,
    check_tokenizer,
    checkpoint_sha256,
    data_identity,
    load_model,
    model_source,
    params_sha256,
)
from jaxtar.errors import DivergedError, RunDirError
from jaxtar.parallel import batch_shardings, make_mesh, param_shardings, shard

PyTree = Any


@dataclass(frozen=True)
class Phase:
    """One stretch of training with one step function and optimiser.

    Attributes:
        name: "tar", "sft", "random_mapping".
        stop: global step at which the phase ends (it starts where the previous one stopped).
        step_fn: jitted ``(params, opt_state, batches, key, frozen) -> (params, opt_state, metrics)``.
        batches_fn: ``step -> batches`` (numpy), a function of the step only.
        init_opt_state: ``params -> opt_state`` (fresh state when the phase starts).
        export_params: ``(params, opt_state) -> params`` to hand on / export (schedule-free: the x average).
        tokens_per_step: token positions processed per step (for throughput).
        batch_axes: on a mesh, ``role -> (batch axis, adversary axis or None)`` of the batches' roles; a role not
            listed has its batch axis first and no adversary axis.
        predicted_bytes: the memory planner's peak for one step (`jaxtar.defenses._fit`; None = no estimate).
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


@dataclass(frozen=True)
class RunResult:
    """What a defence run returns.

    Attributes:
        output_dir: the run folder.
        model_dir: the exported HF checkpoint (None when not exported or interrupted).
        model: the model (``jaxtar.models.Model``).
        params: the final parameters (the exported form).
        tokenizer: the tokenizer.
        steps: completed steps.
        interrupted: stopped by SIGINT / SIGTERM (a checkpoint was saved; ``--resume`` continues).
        metrics: the last metrics line.
    """

    output_dir: Path
    model_dir: Path | None
    model: Any
    params: PyTree
    tokenizer: Any
    steps: int
    interrupted: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)


def schedule_free_adamw(
    lr: float, warmup_steps: int, b1: float, b2: float, eps: float, weight_decay: float, max_grad_norm: float | None
) -> optax.GradientTransformation:
    """The outer optimiser: optax's schedule-free AdamW (with warmup), after optional global-norm clipping.

    The state is ``(clip_state, ScheduleFreeState)``; :func:`schedule_free_params` gives the weights to export.

    Example:
        >>> opt = schedule_free_adamw(1e-3, 2, 0.9, 0.999, 1e-8, 0.0, None)
        >>> state = opt.init({"w": jax.numpy.zeros(2)})
    """
    clip = optax.identity() if max_grad_norm is None else optax.clip_by_global_norm(max_grad_norm)
    sf = optax.contrib.schedule_free_adamw(
        learning_rate=lr, warmup_steps=warmup_steps or None, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay
    )
    return optax.chain(clip, sf)


def schedule_free_params(params: PyTree, opt_state: PyTree) -> PyTree:
    """The evaluation (x-average) weights of a :func:`schedule_free_adamw` run."""
    return optax.contrib.schedule_free_eval_params(opt_state[1], params)


def _commit(tree: PyTree) -> PyTree:
    """Arrays placed explicitly (committed): restored checkpoints are, so fresh state must be too, or a resumed
    run would compile the step a second time for the other argument placement."""
    return jax.tree.map(lambda x: x if getattr(x, "committed", True) else jax.device_put(x, x.sharding), tree)


def jit_step(step: Callable) -> Callable:
    """``jax.jit(step)`` for ``step(params, opt_state, batches, key, frozen)``, called with committed state so that
    fresh, resumed and hand-made inputs all hit one compiled executable (``.jitted`` is the jitted function)."""
    jitted = jax.jit(step)

    def call(params, opt_state, batches, key, frozen):
        return jitted(_commit(params), _commit(opt_state), batches, key, _commit(frozen))

    call.jitted = jitted
    return call


def shard_batches(batches: dict[str, PyTree], mesh: Mesh, axes: Mapping[str, tuple[int, int | None]]) -> PyTree:
    """Place a step's batches on a mesh: each role's batch axis across (data, fsdp) and its adversary axis, if any,
    across adversary (``axes``: `Phase.batch_axes`); axes that do not divide stay replicated."""
    return {name: shard(b, batch_shardings(b, mesh, *axes.get(name, (0, None)))) for name, b in batches.items()}


def _place(tree: PyTree, mesh: Mesh | None) -> PyTree:
    return tree if mesh is None or tree is None else shard(tree, param_shardings(tree, mesh))


def step_key(seed: int, step: int) -> jax.Array:
    """The key of global step ``step`` (a function of (seed, step) only)."""
    return jax.random.fold_in(jax.random.key(seed), step)


class _Signals:
    """Turns the first SIGINT / SIGTERM into a flag checked between steps (the second one aborts)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        print(f"\nreceived {signal.Signals(signum).name}: saving a checkpoint after this step...", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _summary_writer_class():
    """tensorboardX's or torch's SummaryWriter when the packages are installed (checked without importing torch)."""
    from importlib.util import find_spec

    if find_spec("tensorboardX") is not None:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    if find_spec("tensorboard") is not None and find_spec("torch") is not None:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter
    return None


def read_metrics_lines(path: Path) -> list[str]:
    """The lines of a ``metrics.jsonl``, without a torn last line (a kill mid-write); any other unreadable line is a
    `RunDirError` naming the file and line."""
    lines = path.read_text().splitlines()
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not a metrics record with an integer 'step'")
        except ValueError as err:
            if number == len(lines):
                print(f"note: dropping the torn last line of {path} (line {number})", file=sys.stderr)
                break
            raise RunDirError(f"{path}, line {number}: {err}; the run's metrics are damaged") from err
        out.append(line)
    return out


class _MetricsLog:
    """metrics.jsonl (truncated to the resumed step) and TensorBoard when installed."""

    def __init__(self, path: Path, start_step: int, tensorboard: bool) -> None:
        self.path = path
        if path.exists():  # drop lines written after the checkpoint we resume from (and a torn last line)
            kept = [line for line in read_metrics_lines(path) if json.loads(line)["step"] <= start_step]
            write_text_atomic(path, "".join(line + "\n" for line in kept))
        self._file = path.open("a")
        self._tb = None
        if tensorboard:
            SummaryWriter = _summary_writer_class()
            if SummaryWriter is not None:
                self._tb = SummaryWriter(str(path.parent / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k != "step":
                    self._tb.add_scalar(f"{record['phase']}/{k}", v, record["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _progress(total: int, initial: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="step", dynamic_ncols=True)


def _scalars(metrics: PyTree) -> dict[str, float]:
    host = jax.device_get(metrics)
    return {k: float(np.asarray(v)) for k, v in host.items()}


def _restore(
    ckpt: Checkpointer, phases: list[Phase], params0: PyTree, mesh: Mesh | None
) -> tuple[int, int, PyTree, PyTree]:
    """(phase index, completed steps, params, opt_state) from the newest checkpoint, placed for this run (on
    ``mesh``, or on the default device: a run may resume on another mesh than it was saved from)."""
    step = ckpt.latest_step()
    meta = ckpt.restore_meta(step)
    names = [p.name for p in phases]
    if meta.get("phase") not in names:
        raise ValueError(f"checkpoint {step} belongs to phase {meta.get('phase')!r}, this run has {names}")
    index = names.index(meta["phase"])
    target = jax.eval_shape(lambda p: {"params": p, "opt_state": phases[index].init_opt_state(p)}, params0)
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: one, target) if mesh is None else param_shardings(target, mesh)
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target, shardings)
    state, meta = ckpt.restore(step, target)
    return index, int(meta["step"]), state["params"], state["opt_state"]


def run_phases(
    phases: list[Phase], params0: PyTree, frozen: PyTree, run_dir: RunDir, run: RunConfig, mesh: Mesh | None = None
) -> tuple[PyTree, int, bool, dict[str, Any]]:
    """Runs (or resumes) the phases; returns (exported params, completed steps, interrupted, last metrics).

    ``params0`` are the starting weights (also the restore target's shapes); ``frozen`` is passed to every step
    unchanged (TAR: the same ``params0`` arrays, the frozen base model — no second copy). With a ``mesh`` params,
    optimiser state and ``frozen`` are FSDP-sharded and each step's batches placed by `shard_batches`.
    """
    ckpt = Checkpointer(run_dir.checkpoint_dir, max_to_keep=run.keep_checkpoints)
    index, step = 0, 0
    params, opt_state = params0, None
    total = phases[-1].stop
    if run_dir.resumed and ckpt.latest_step() is not None:
        index, step, params, opt_state = _restore(ckpt, phases, params0, mesh)
        if step > total:
            ckpt.close()
            raise InputError(
                f"{run_dir.path} has {step} steps done, more than the {total} asked for; resume with at least "
                f"{step} steps (nothing was changed)"
            )
        print(f"resumed from step {step} ({phases[index].name})", file=sys.stderr)
    else:
        params = jax.tree.map(lambda x: x.copy(), params0)  # trained separately from the frozen base
        opt_state = phases[0].init_opt_state(params)
    params, opt_state, frozen = _place(params, mesh), _place(opt_state, mesh), _place(frozen, mesh)
    log = _MetricsLog(run_dir.metrics_path, step, run.tensorboard)
    last: dict[str, Any] = _last_record(run_dir.metrics_path) if step >= total else {}
    interrupted = False
    unchecked: list[tuple[int, jax.Array]] = []  # (step, all-finite flag) not yet read back

    def check_finite() -> None:
        """Raises `DivergedError` at the first step whose loss, weights or optimiser state were not finite."""
        flags = jax.device_get([flag for _, flag in unchecked])
        bad = [s for (s, _), ok in zip(unchecked, flags) if not ok]
        unchecked.clear()
        if bad:
            kept = ckpt.latest_step()
            raise DivergedError(
                f"{phases[index].name} diverged: non-finite loss, weights or optimiser state at step {bad[0]}; "
                f"stopped, nothing exported, last finite checkpoint: {'none' if kept is None else f'step {kept}'} in "
                f"{run_dir.checkpoint_dir}. Lower the learning rate (or clip gradients) and start a new run folder"
            )

    def save(phase: Phase) -> None:
        check_finite()
        ckpt.save(step, {"params": params, "opt_state": opt_state}, {"phase": phase.name, "step": step})

    try:
        with _Signals() as signals, _progress(total, step, run.progress, phases[index].name) as bar:
            while index < len(phases):
                phase = phases[index]
                bar.set_description(phase.name)
                t_prev = time.perf_counter()
                while step < phase.stop and signals.received is None:
                    batches = phase.batches_fn(step)
                    if mesh is not None:
                        batches = shard_batches(batches, mesh, phase.batch_axes)
                    params, opt_state, metrics = phase.step_fn(
                        params, opt_state, batches, step_key(run.seed, step), frozen
                    )
                    step += 1
                    unchecked.append((step, _all_finite((params, opt_state, metrics))))  # read back at logs and saves
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
                    if step % run.checkpoint_every == 0 or step == phase.stop:
                        save(phase)
                if signals.received is not None and step < total:
                    save(phase)
                    interrupted = True
                    break
                if index + 1 < len(phases):  # hand the exported weights to the next phase, fresh optimiser
                    params = _place(phase.export_params(params, opt_state), mesh)
                    opt_state = _place(phases[index + 1].init_opt_state(params), mesh)
                index += 1
    finally:
        ckpt.close()
        log.close()
    if interrupted:
        return params, step, True, last
    final = phases[-1].export_params(params, opt_state)
    result = {"complete": True, "steps": step, "metrics": last}
    if _read_result(run_dir.path) != result:  # a resumed, finished run is reported unchanged
        write_json_atomic(run_dir.path / "result.json", result)
    return final, step, False, last


@jax.jit
def _all_finite(tree: PyTree) -> jax.Array:
    """Whether every float of ``tree`` (weights, optimiser state, metrics) is finite, as a device bool."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.bool_(True)


def _last_record(path: Path) -> dict[str, Any]:
    lines = read_metrics_lines(path) if path.exists() else []
    return json.loads(lines[-1]) if lines else {}


def _read_result(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "result.json").read_text())
    except (OSError, ValueError):
        return None


_SHOWN = ("loss", "tamper_loss", "retain_ce", "representation", "random_mapping", "sft_ce", "attack_final")


def run_defence(
    method: str, config: DefenceConfig, build: Callable, model: Any, params: PyTree, tokenizer: Any
) -> RunResult:
    """Load (unless given), validate every input, open the run folder, run the phases ``build`` makes, export."""
    from jaxtar.models import save_pretrained

    if config.run.output_dir is None:
        raise InputError("run.output_dir is required (--output DIR)")
    if (model is None) != (params is None) or (model is None) != (tokenizer is None):
        raise ValueError("pass model, params and tokenizer together (or none to load config.model)")
    if model is None:
        model, params, tokenizer = load_model(config.model)
        base_sha256 = checkpoint_sha256(model_source(config.model))
    else:
        check_tokenizer(model, tokenizer)
        base_sha256 = params_sha256(params)
    identity = config.identity(method)
    identity["inputs"] = {"model_sha256": base_sha256, "data": data_identity(config.data)}  # a resume must match
    mesh = None
    sizes = (config.run.mesh_data, config.run.mesh_fsdp, config.run.mesh_adversary)
    if sizes != (1, 1, 1):
        try:
            mesh = make_mesh(*sizes)
        except ValueError as e:
            raise InputError(f"run.mesh_*: {e}") from e
        params = _place(params, mesh)  # the base model is held once, sharded (no full copy left on one device)
    check_positions(model, config.data.max_length)
    phases, _ = build(config, model, params, tokenizer, mesh)  # all inputs validated before the folder is touched
    check_memory({p.name: p.predicted_bytes for p in phases}, mesh, config.run.force)
    with open_run_dir(config.run.output_dir, identity, resume=config.run.resume, optional=("inputs",)) as run_dir:
        if not run_dir.resumed:
            save_config(config, run_dir.path / "config.yaml")
        finished = _read_result(run_dir.path) or {}
        already_done = finished.get("steps") == phases[-1].stop and run_dir.model_dir.is_dir()
        frozen = params if method == "tar" else None  # the base model for the representation loss: held once
        final, steps, interrupted, metrics = run_phases(phases, params, frozen, run_dir, config.run, mesh)
        model_dir = run_dir.model_dir if already_done else None
        if already_done:
            print(f"{run_dir.path} was already complete ({steps} steps); nothing changed", file=sys.stderr)
        elif not interrupted and config.run.export:
            model_dir = save_pretrained(model, final, run_dir.model_dir, tokenizer=tokenizer, overwrite=run_dir.resumed)
            print(f"wrote {model_dir}", file=sys.stderr)
    return RunResult(run_dir.path, model_dir, model, final, tokenizer, steps, interrupted, metrics)


def check_divides(
    mesh: Mesh | None, batch_sizes: Mapping[str, int], adversary_counts: Mapping[str, int] | None = None
) -> None:
    """Refuses (`InputError`) sizes a mesh axis would not split, instead of silently replicating them: batch sizes
    across data x fsdp, adversary counts across adversary (``name -> value``; None values are skipped).

    Example:
        >>> check_divides(None, {"tamper_batch_size": 3})  # one device: anything goes
    """
    if mesh is None:
        return
    for sizes, axes in ((batch_sizes, ("data", "fsdp")), (adversary_counts or {}, ("adversary",))):
        n = int(np.prod([mesh.shape[a] for a in axes]))
        for name, value in sizes.items():
            if value is not None and value % n:
                raise InputError(f"{name} = {value} does not divide across the mesh's {' x '.join(axes)} = {n} devices")
