"""Value and meta-gradient of a defence objective taken through a simulated attack.

    value(defended) = sum_j w_j * tamper_loss(defended, attacked weights after j steps, tamper_batch)

with the records j and weights w_j from a `TamperSchedule` (TAR: every s-th step, exp(rate * (j - K)); MLAC:
every step including j = 0, uniform). `meta_value_and_grad` returns the value and its gradient with respect to the
defended params (and optionally the adversary's hyper-parameters) under one of six estimators:

* exact       reverse mode through the whole unroll; each step stores its matmul outputs and recomputes its
              elementwise work in the backward pass (`EXACT_POLICY`: less memory and less time than storing
              everything, docs/benchmarks.md "Meta-gradients");
* remat       exact, each step under `jax.checkpoint(policy=...)`; `two_level=True` also checkpoints groups of
              ~sqrt(K) steps (memory ~2 sqrt(K) states instead of K);
* mixed       exact; each step is a custom_vjp that stores only its inputs (+ its gradient) and computes the
              Hessian-vector product of the backward pass forward-over-reverse (`jvp` of `grad`); each tamper
              record is recomputed from its input (`jax.checkpoint`), so a record costs one stored state, not its
              activations;
* truncated   exact through the last T steps, straight-through (d w_{K-T} / d w_0 = I) before them;
* first_order straight-through for the whole attack (FO-MAML): truncated with T = 0;
* tar         TAR's estimator: the same first-order gradient, accumulated inside the scan at each record, so
              memory stays that of a plain attack and nothing is differentiated through the loop.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxtar.attacks.adversary import ADAM_FAMILY, Adversary
from jaxtar.attacks.optimizers import AttackOptimizer, make_optimizer
from jaxtar.attacks.unroll import (
    AttackProblem,
    Carry,
    count_records,
    make_step,
    plan_runs,
    resolve_adversary,
    run_plan,
    tree_select,
    two_level_group,
)
from jaxtar.meta.spec import (
    EXACT_POLICY,
    ON_NONFINITE,
    Estimator,
    TamperSchedule,
    checkpoint_policy,
    warn_if_zeroed,
)

PyTree = Any


class MetaAux(NamedTuple):
    """Diagnostics: per-step attack losses [K], per-record tamper losses [m], finiteness flag."""

    attack_losses: jax.Array
    tamper_losses: jax.Array
    is_finite: jax.Array


class MetaResult(NamedTuple):
    """(value, grads w.r.t. defended params, grads w.r.t. hyper-parameters or None, aux)."""

    value: jax.Array
    grads: PyTree
    hyper_grads: PyTree
    aux: MetaAux


@jax.custom_vjp
def _straight_through(source: PyTree, value: PyTree) -> PyTree:
    """Returns `value`; its cotangent goes to `source` unchanged (d value / d source := I)."""
    return value


def _st_fwd(source, value):
    return value, None


def _st_bwd(_, ct):
    return ct, jax.tree.map(jnp.zeros_like, ct)


_straight_through.defvjp(_st_fwd, _st_bwd)


def _mixed_step(problem: AttackProblem, opt: AttackOptimizer):
    """One attack step as a custom_vjp: saves (inputs, gradient); backward = vjp(update) + jvp(grad)."""

    def value_grad(d, t, batch):
        return jax.value_and_grad(problem.attack_loss, argnums=1)(d, t, batch)

    @jax.custom_vjp
    def f(d, hp, t, s, k, batch):
        loss, g = value_grad(d, t, batch)
        t2, s2 = opt.step(g, s, t, k, hp)
        return t2, s2, loss

    def fwd(d, hp, t, s, k, batch):
        loss, g = value_grad(d, t, batch)
        t2, s2 = opt.step(g, s, t, k, hp)
        return (t2, s2, loss), (d, hp, t, s, k, batch, g)

    def bwd(res, cts):
        d, hp, t, s, k, batch, g = res
        ct_t2, ct_s2, ct_loss = cts
        _, update_vjp = jax.vjp(lambda t_, s_, g_, hp_: opt.step(g_, s_, t_, k, hp_), t, s, g, hp)
        ct_t, ct_s, ct_g, ct_hp = update_vjp((ct_t2, ct_s2))
        both_grads = lambda t_: jax.grad(problem.attack_loss, argnums=(0, 1))(d, t_, batch)
        (gd, gt), (hd, ht) = jax.jvp(both_grads, (t,), (ct_g,))
        ct_t = jax.tree.map(lambda a, b, c: a + b + ct_loss * c, ct_t, ht, gt)
        ct_d = jax.tree.map(lambda a, b: a + ct_loss * b, hd, gd)
        return ct_d, ct_hp, ct_t, ct_s, None, None

    f.defvjp(fwd, bwd)

    def step_fn(d, hp, active_steps):
        def step(c: Carry, batch):
            t, s, loss = f(d, hp, c.trainable, c.opt_state, c.step, batch)
            if active_steps is not None:
                active = c.step < active_steps
                t, s = tree_select(active, (t, s), (c.trainable, c.opt_state))
                loss = jnp.where(active, loss, 0.0)
            return Carry(t, s, c.step + 1, c.acc), loss

        return step

    return step_fn


class _Setup(NamedTuple):
    problem: AttackProblem
    opt: AttackOptimizer
    estimator: Estimator
    schedule: TamperSchedule
    num_steps: int
    unroll: bool


def _tree_zeros(tree: PyTree) -> PyTree:
    return jax.tree.map(jnp.zeros_like, tree)


def _objective(cfg: _Setup, d, hp, active, weights, batches, tamper_batch, key):
    """Differentiable value for exact / remat / mixed / truncated / first_order; returns (value, aux)."""
    problem, opt, est, sched, K = cfg.problem, cfg.opt, cfg.estimator, cfg.schedule, cfg.num_steps
    t0 = problem.attack_init(d, key)
    split = 0
    if est.kind == "first_order":
        split = K
    elif est.kind == "truncated":
        split = max(K - est.truncation, 0)

    def tamper_record(d_, source):
        def record(c: Carry, w):
            x = opt.eval_params(c.opt_state, c.trainable)
            if source is not None:
                x = _straight_through(source, x)
            loss = problem.tamper_loss(d_, x, tamper_batch)
            return c._replace(acc=c.acc + w * loss), loss

        return record

    step = make_step(problem, opt, d, hp, active)
    record = tamper_record(d, None)
    if est.kind == "mixed":
        step = _mixed_step(problem, opt)(d, hp, active)
    if est.kind in ("remat", "exact", "truncated"):
        policy = checkpoint_policy(est.remat_policy if est.kind == "remat" else EXACT_POLICY)
        step, record = jax.checkpoint(step, policy=policy), jax.checkpoint(record, policy=policy)
    if est.kind == "mixed":  # records keep only their inputs too (one more tamper forward each in the backward)
        record = jax.checkpoint(record, policy=checkpoint_policy("nothing_saveable"))

    n0 = 1 if sched.include_initial else 0
    losses, tls = [], []
    if split > 0:  # straight-through phase: no gradient through the steps, records pass theirs to t0
        sg = jax.lax.stop_gradient
        carry = Carry(sg(t0), opt.init(sg(t0), sg(hp)), jnp.zeros((), jnp.int32), jnp.zeros(()))
        st_record = tamper_record(d, t0)
        if n0:
            carry, tl = st_record(carry, weights[0])
            tls.append(tl[None])
        runs = plan_runs(0, split, sched.every)
        m1 = count_records(runs)
        sg_step = make_step(problem, opt, sg(d), sg(hp), active)
        carry, l1, tl1 = run_plan(
            sg_step, st_record, carry, runs, jax.tree.map(lambda x: x[:split], batches), weights[n0 : n0 + m1]
        )
        losses.append(l1)
        tls += [] if tl1 is None else [tl1]
        carry = Carry(_straight_through(t0, carry.trainable), sg(carry.opt_state), carry.step, carry.acc)
        rest_w = weights[n0 + m1 :]
    else:
        carry = Carry(t0, opt.init(t0, hp), jnp.zeros((), jnp.int32), jnp.zeros(()))
        if n0:
            carry, tl = record(carry, weights[0])
            tls.append(tl[None])
        rest_w = weights[n0:]
    if split < K:
        runs = plan_runs(split, K, sched.every)
        group = two_level_group(runs, K - split) if est.two_level else None
        xs = jax.tree.map(lambda x: x[split:], batches)
        carry, l2, tl2 = run_plan(step, record, carry, runs, xs, rest_w, group=group, unroll=cfg.unroll)
        losses.append(l2)
        tls += [] if tl2 is None else [tl2]
    return carry.acc, (jnp.concatenate(losses), jnp.concatenate(tls))


def _tar(cfg: _Setup, d, hp, active, weights, batches, tamper_batch, key):
    """TAR's estimator: first-order tamper gradients accumulated inside the scan (no autodiff of the loop)."""
    problem, opt, sched = cfg.problem, cfg.opt, cfg.schedule
    t0, init_vjp = jax.vjp(lambda d_: problem.attack_init(d_, key), d)

    def record(c: Carry, w):
        x = opt.eval_params(c.opt_state, c.trainable)
        loss, (gd, gx) = jax.value_and_grad(problem.tamper_loss, argnums=(0, 1))(d, x, tamper_batch)
        (gi,) = init_vjp(gx)
        value, acc = c.acc
        acc = jax.tree.map(lambda a, u, v: a + w * (u + v), acc, gd, gi)
        return c._replace(acc=(value + w * loss, acc)), loss

    carry = Carry(t0, opt.init(t0, hp), jnp.zeros((), jnp.int32), (jnp.zeros(()), _tree_zeros(d)))
    n0 = 1 if sched.include_initial else 0
    tls = []
    if n0:
        carry, tl = record(carry, weights[0])
        tls.append(tl[None])
    runs = plan_runs(0, cfg.num_steps, sched.every)
    step = make_step(problem, opt, d, hp, active)
    carry, losses, tl = run_plan(step, record, carry, runs, batches, weights[n0:], unroll=cfg.unroll)
    tls += [] if tl is None else [tl]
    value, grads = carry.acc
    return value, grads, _tree_zeros(hp), losses, jnp.concatenate(tls)


def _all_finite(*trees: PyTree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for t in trees for x in jax.tree.leaves(t)]
    return jnp.stack(leaves).all() if leaves else jnp.asarray(True)


def meta_core(cfg: _Setup, defended, hp, active, weights, batches, tamper_batch, key, on_nonfinite: str):
    """Per-adversary core (vmappable over hp, active, weights, batches, tamper_batch, key)."""
    if cfg.estimator.kind == "tar":
        value, grads, hgrads, losses, tls = _tar(cfg, defended, hp, active, weights, batches, tamper_batch, key)
    else:
        f = lambda d, h: _objective(cfg, d, h, active, weights, batches, tamper_batch, key)
        (value, (losses, tls)), (grads, hgrads) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(defended, hp)
    ok = _all_finite(value, grads, hgrads, losses)
    if on_nonfinite == "zero":
        grads, hgrads = tree_select(ok, (grads, hgrads), _tree_zeros((grads, hgrads)))
    return MetaResult(value, grads, hgrads, MetaAux(losses, tls, ok))


def make_setup(
    problem: AttackProblem,
    adversary: Adversary,
    *,
    num_steps: int,
    schedule: TamperSchedule,
    estimator: Estimator,
    unroll: bool = False,
) -> _Setup:
    """Validate and bundle the static configuration of a meta-gradient computation."""
    if problem.tamper_loss is None:
        raise ValueError("meta-gradients need AttackProblem.tamper_loss")
    if estimator.differentiates_unroll and adversary.optimizer in ADAM_FAMILY and adversary.eps_root <= 0:
        raise ValueError(
            f"estimator {estimator.kind!r} differentiates through {adversary.optimizer}: set eps_root > 0 "
            "(sqrt has an infinite derivative at 0; zero gradient entries would give NaN meta-gradients)"
        )
    if len(schedule.record_steps(num_steps)) == 0:
        raise ValueError(f"TamperSchedule(every={schedule.every}) makes no record within {num_steps} steps")
    return _Setup(problem, make_optimizer(adversary, num_steps), estimator, schedule, num_steps, unroll)


def meta_value_and_grad(
    problem: AttackProblem,
    defended: PyTree,
    batches: PyTree,
    tamper_batch: PyTree,
    *,
    key: jax.Array,
    adversary: Adversary | None = None,
    schedule: TamperSchedule | None = None,
    estimator: Estimator | None = None,
    hyperparams: dict[str, jax.Array] | None = None,
    on_nonfinite: str = "zero",
    unroll: bool = False,
) -> MetaResult:
    """Value and meta-gradient of sum_j w_j * tamper_loss after j attack steps.

    Args:
        problem: the attack (with `tamper_loss`).
        defended: the defended params (the meta-gradient's variables).
        batches: per-step attack batches, leading axis K = `adversary.steps` (another K is refused).
        tamper_batch: the fixed batch of the tamper loss.
        adversary: optimiser kind, hyper-parameters and schedule (default: the one the problem was built with).
        key: the attacker's randomness (passed to `attack_init`).
        schedule: tamper records and weights (default: the final step only).
        estimator: default `Estimator("exact")`.
        hyperparams: differentiable hyper-parameter values; when given, `hyper_grads` holds their gradient.
        on_nonfinite: "zero" replaces non-finite gradients by zeros (`aux.is_finite` is False; an eager call warns),
            "keep" does not.
        unroll: fully unroll the scans (only for XLA cost analysis).

    Returns:
        MetaResult(value, grads, hyper_grads (None unless `hyperparams`), aux).

    Example:
        >>> from jaxtar.attacks.unroll import full_parameter_problem
        >>> prob = full_parameter_problem(lambda w, b: jnp.sum((w - b) ** 2), lambda w, b: jnp.sum(w * b))
        >>> res = meta_value_and_grad(prob, jnp.zeros(2), jnp.ones((1, 2)), jnp.ones(2),
        ...                           adversary=Adversary("sgd", lr=0.25, steps=1), key=jax.random.key(0))
        >>> res.grads.tolist()  # w1 = w0 - 0.5 (w0 - 1): d sum(w1) / d w0 = 0.5
        [0.5, 0.5]
    """
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be 'zero' or 'keep', got {on_nonfinite!r}")
    adversary = resolve_adversary(problem, adversary)
    num_steps = jax.tree.leaves(batches)[0].shape[0]
    schedule = TamperSchedule(every=num_steps, weighting="final") if schedule is None else schedule
    cfg = make_setup(
        problem, adversary, num_steps=num_steps, schedule=schedule, estimator=estimator or Estimator(), unroll=unroll
    )
    hp = cfg.opt.default_hyperparams() if hyperparams is None else dict(hyperparams)
    weights = jnp.asarray(schedule.weights(num_steps))
    res = meta_core(cfg, defended, hp, None, weights, batches, tamper_batch, key, on_nonfinite)
    warn_if_zeroed(res.aux.is_finite, on_nonfinite, "meta_value_and_grad")
    return res if hyperparams is not None else res._replace(hyper_grads=None)
