"""The differentiable attack: K optimiser steps as `lax.scan` over pure parameter pytrees.

What the attacker trains and on what loss is an `AttackProblem` (`jaxtar.attacks.problem`, re-exported here).

Steps are grouped into *segments* of `every` steps, each followed by an optional *record* (a tamper-loss
evaluation, a metric, a gradient accumulation). A run of identical segments is one `lax.scan`; `run_plan` is the
engine every estimator in `jaxtar.meta` shares, `unroll` the plain (red-team) front end.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jaxtar.attacks.adversary import Adversary, check_steps
from jaxtar.attacks.optimizers import AttackOptimizer, make_optimizer
from jaxtar.attacks.problem import (  # noqa: F401 - re-exported: the problem an unroll runs
    AttackProblem,
    full_parameter_problem,
    lora_problem,
    model_attack_problem,
    resolve_adversary,
)

PyTree = Any
ATTACK_GRAD = "attack_grad"  # the checkpoint name of each step's attack gradient


class Carry(NamedTuple):
    """Loop state of an unroll: trainable params, optimiser state, step counter, record accumulator."""

    trainable: PyTree
    opt_state: PyTree
    step: jax.Array
    acc: PyTree


@dataclass(frozen=True)
class Run:
    """`count` identical segments of `length` steps, each followed by a record when `record`."""

    count: int
    length: int
    record: bool


def plan_runs(start: int, stop: int, every: int | Sequence[int] | None) -> tuple[Run, ...]:
    """Steps start+1..stop grouped into runs; a record follows every step number divisible by `every` (or, for a
    sequence, each listed step number).

    Example:
        >>> plan_runs(0, 10, 4)
        (Run(count=2, length=4, record=True), Run(count=1, length=2, record=False))
        >>> plan_runs(0, 10, (1, 2, 3, 7))
        (Run(count=3, length=1, record=True), Run(count=1, length=4, record=True), Run(count=1, length=3, record=False))
    """
    points: list[int] = []  # every None or 0: no records
    if every is not None and not isinstance(every, numbers.Integral):
        points = sorted({int(j) for j in every if start < j <= stop})
    elif every:
        every = int(every)
        points = list(range((start // every + 1) * every, stop + 1, every))
    segments: list[tuple[int, bool]] = []
    p = start
    for j in points:
        segments.append((j - p, True))
        p = j
    if p < stop:
        segments.append((stop - p, False))
    runs: list[Run] = []
    for length, record in segments:
        if runs and runs[-1].length == length and runs[-1].record == record:
            runs[-1] = Run(runs[-1].count + 1, length, record)
        else:
            runs.append(Run(1, length, record))
    return tuple(runs)


def count_records(runs: tuple[Run, ...]) -> int:
    """Number of records a plan makes (not counting an initial one)."""
    return sum(r.count for r in runs if r.record)


def _take(tree: PyTree, start: int, stop: int, shape: tuple[int, ...]) -> PyTree:
    return jax.tree.map(lambda x: x[start:stop].reshape(shape + x.shape[1:]), tree)


def _scan(f, carry, xs, unroll: bool):
    if jax.tree.leaves(xs)[0].shape[0] == 1:  # a length-1 loop: call the body (fewer nested while loops)
        carry, y = f(carry, jax.tree.map(lambda x: x[0], xs))
        return carry, jax.tree.map(lambda x: x[None], y)
    return jax.lax.scan(f, carry, xs, unroll=True if unroll else 1)


def two_level_group(runs: tuple[Run, ...], num_steps: int) -> int:
    """Segments per outer checkpoint for two-level rematerialisation: about sqrt(K) steps per group, so that
    ~sqrt(K) group inputs plus one group's ~sqrt(K) step inputs are stored instead of K step inputs.

    Example:
        >>> two_level_group(plan_runs(0, 64, 4), 64)  # groups of 2 segments of 4 steps
        2
    """
    return max(1, round(math.sqrt(num_steps) / max(r.length for r in runs)))


def grouping(run: Run, group: int | None) -> int:
    """Segments per group for this run under `group` (0: the run is not grouped: it would make fewer than two
    groups, which saves nothing).

    Example:
        >>> grouping(Run(count=4, length=4, record=True), 1), grouping(Run(count=1, length=4, record=True), 1)
        (1, 0)
    """
    if not group:
        return 0
    g = min(group, run.count)
    return g if run.count // g >= 2 else 0


def run_plan(
    step_fn: Callable[[Carry, PyTree], tuple[Carry, jax.Array]],
    record_fn: Callable[[Carry, PyTree], tuple[Carry, PyTree]] | None,
    carry: Carry,
    runs: tuple[Run, ...],
    step_xs: PyTree,
    record_xs: PyTree = None,
    *,
    group: int | None = None,
    unroll: bool = False,
) -> tuple[Carry, jax.Array, PyTree]:
    """Execute a plan: scans of segments, each segment `length` steps then an optional record.

    Args:
        step_fn: `(carry, x_k) -> (carry, y_k)`; `step_xs` has a leading axis with one entry per step.
        record_fn: `(carry, r_j) -> (carry, o_j)`; `record_xs` has a leading axis with one entry per record.
        carry: the initial loop state.
        runs: from `plan_runs`.
        group: segments per `jax.checkpoint`-ed super-segment (two-level rematerialisation, see
            `two_level_group`); None for none. A run is grouped only when that makes two or more groups.
        unroll: fully unroll every scan (for XLA cost analysis, which counts a loop body once).

    Returns:
        (final carry, per-step outputs stacked [num_steps, ...], per-record outputs stacked [num_records, ...]).
    """
    ys, outs = [], []
    i = j = 0
    for run in runs:
        n = run.count * run.length

        def segment(c, inp, run=run):
            xs_seg, rx = inp
            c, y = _scan(step_fn, c, xs_seg, unroll)
            o = None
            if run.record:
                c, o = record_fn(c, rx)
            return c, (y, o)

        xs = _take(step_xs, i, i + n, (run.count, run.length))
        rxs = _take(record_xs, j, j + run.count, (run.count,)) if run.record else None
        g = grouping(run, group)
        q, r = divmod(run.count, g or 1)
        pieces = []
        if g:
            outer = jax.checkpoint(lambda c, inp, seg=segment: _scan(seg, c, inp, unroll))
            grouped = jax.tree.map(lambda x, q=q, g=g: x[: q * g].reshape((q, g) + x.shape[1:]), (xs, rxs))
            carry, (y, o) = _scan(outer, carry, grouped, unroll)
            pieces.append(jax.tree.map(lambda x, n=q * g: x.reshape((n,) + x.shape[2:]), (y, o)))
        if r or not g:
            rest = jax.tree.map(lambda x, start=q * g: x[start:], (xs, rxs))
            carry, (y, o) = _scan(segment, carry, rest, unroll)
            pieces.append((y, o))
        y, o = jax.tree.map(lambda *a: jnp.concatenate(a), *pieces) if len(pieces) > 1 else pieces[0]
        ys.append(y.reshape((n,) + y.shape[2:]))
        if run.record:
            outs.append(o)
            j += run.count
        i += n
    losses = jnp.concatenate(ys) if ys else jnp.zeros((0,))
    records = jax.tree.map(lambda *a: jnp.concatenate(a), *outs) if outs else None
    return carry, losses, records


def tree_select(pred: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    """Leafwise `jnp.where(pred, a, b)` for a scalar predicate."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def make_step(
    problem: AttackProblem,
    opt: AttackOptimizer,
    defended: PyTree,
    hp: dict[str, jax.Array],
    active_steps: jax.Array | None = None,
) -> Callable[[Carry, PyTree], tuple[Carry, jax.Array]]:
    """The scan body of a plain attack step; steps with index >= `active_steps` leave the state unchanged."""

    def step(c: Carry, batch: PyTree) -> tuple[Carry, jax.Array]:
        loss, grads = jax.value_and_grad(problem.attack_loss, argnums=1)(defended, c.trainable, batch)
        grads = checkpoint_name(grads, ATTACK_GRAD)  # a remat policy may save it (see jaxtar.meta.Estimator)
        trainable, state = opt.step(grads, c.opt_state, c.trainable, c.step, hp)
        if active_steps is not None:
            active = c.step < active_steps
            trainable, state = tree_select(active, (trainable, state), (c.trainable, c.opt_state))
            loss = jnp.where(active, loss, 0.0)
        return Carry(trainable, state, c.step + 1, c.acc), loss

    return step


class UnrollResult(NamedTuple):
    """Output of `unroll`: final weights (evaluation weights for schedule-free), state, losses, records."""

    trainable: PyTree
    opt_state: PyTree
    losses: jax.Array
    records: PyTree


def unroll(
    problem: AttackProblem,
    defended: PyTree,
    adversary: Adversary | None = None,
    batches: PyTree = None,
    *,
    key: jax.Array,
    hyperparams: dict[str, jax.Array] | None = None,
    active_steps: jax.Array | None = None,
    record_every: int | None = None,
    record_at: Sequence[int] | None = None,
    include_initial: bool = False,
    record_fn: Callable[[PyTree, PyTree], PyTree] | None = None,
) -> UnrollResult:
    """Run the attack; differentiable end to end.

    Args:
        problem: what the attacker trains.
        defended: the defended params.
        adversary: optimiser, schedule, clipping; None (or left out: ``unroll(problem, params, batches=...)``) for
            the one the problem was built with (`resolve_adversary`).
        batches: per-step batches, a pytree with a leading axis of length K <= `adversary.steps`: K < steps runs the
            first K steps of the attack (its schedule still that of `adversary.steps`); K > steps is refused.
        key: the attacker's randomness (LoRA / head init).
        hyperparams: overrides of `adversary.hyperparams()` (arrays; e.g. traced for a hyper-gradient).
        active_steps: run only this many of the K steps (the rest are no-ops) - for vmapped mixed lengths.
        record_every: call `record_fn(defended, weights)` after every step number divisible by this.
        record_at: or after each of these step numbers (1..K; e.g. ``lambda d, w: w`` keeps the weights there);
            the records come back in step order, one per distinct step.
        include_initial: also record before the first step.
        record_fn: metric at the recorded steps (weights are `eval_params` for schedule-free).

    Returns:
        UnrollResult(final weights, optimiser state, per-step attack losses [K], stacked records or None).

    Example:
        >>> prob = full_parameter_problem(lambda w, b: jnp.sum((w - b) ** 2))
        >>> res = unroll(prob, jnp.zeros(2), Adversary("sgd", lr=0.25, steps=2), jnp.ones((2, 2)),
        ...              key=jax.random.key(0))
        >>> res.trainable.tolist()
        [0.75, 0.75]
    """
    if adversary is not None and not isinstance(adversary, Adversary):
        raise TypeError(
            f"unroll's third argument is the adversary, got {type(adversary).__name__}; to use the problem's own "
            "adversary pass the batches by keyword: unroll(problem, params, batches=..., key=...)"
        )
    if not jax.tree.leaves(batches):
        raise TypeError("unroll needs the attack batches (batches=...), a pytree with a leading step axis")
    adversary = resolve_adversary(problem, adversary)
    num_steps = jax.tree.leaves(batches)[0].shape[0]
    check_steps(adversary, num_steps, prefix=True)
    opt = make_optimizer(adversary)
    hp = opt.default_hyperparams() if hyperparams is None else dict(hyperparams)
    trainable = problem.attack_init(defended, key)
    carry = Carry(trainable, opt.init(trainable, hp), jnp.zeros((), jnp.int32), None)
    if record_every is not None and record_at is not None:
        raise ValueError("unroll takes record_every or record_at, not both")
    if record_at is not None and not all(1 <= j <= num_steps for j in record_at):
        raise ValueError(f"record_at steps must be in 1..{num_steps}, got {tuple(record_at)}")
    every = (record_every if record_at is None else tuple(record_at)) if record_fn is not None else None
    runs = plan_runs(0, num_steps, every)

    def record(c: Carry, _):
        return c, record_fn(defended, opt.eval_params(c.opt_state, c.trainable))

    first = None
    if record_fn is not None and include_initial:
        first = jax.tree.map(lambda x: x[None], record(carry, None)[1])
    n_rec = count_records(runs)
    step = make_step(problem, opt, defended, hp, active_steps)
    carry, losses, records = run_plan(step, record, carry, runs, batches, jnp.zeros((n_rec,)))
    if first is not None:
        records = first if records is None else jax.tree.map(lambda a, b: jnp.concatenate([a, b]), first, records)
    return UnrollResult(opt.eval_params(carry.opt_state, carry.trainable), carry.opt_state, losses, records)
