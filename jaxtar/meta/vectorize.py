"""Many adversaries at once: one `vmap` per optimiser kind, chunked, shardable along an "adversary" mesh axis.

Adversaries whose `static_key()` agree (optimiser kind, schedule shape, clipping on/off, LoRA spec) form an
`AdversaryGroup`: their numeric hyper-parameters become arrays with a leading adversary axis, different step counts
are handled by masking the steps past each adversary's own count, and the whole group is one vmapped computation.
`chunk_size` bounds memory: chunks of adversaries run one after another (a `lax.scan` that sums gradients, or
`lax.map(..., batch_size=)` when per-adversary gradients are requested). Groups of different kinds combine into one
mean gradient with `grouped_meta_value_and_grad`. `jit_meta_value_and_grad` is the one-adversary call compiled once,
its adversary read from the problem.

Under the default `on_nonfinite="zero"` a diverged adversary's meta-gradient is replaced by zeros; `aux.is_finite`
marks which (`GroupsResult.nonfinite_count` counts them), and a call made eagerly (not inside `jax.jit`) warns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxtar.attacks.adversary import Adversary, check_steps
from jaxtar.attacks.unroll import AttackProblem, resolve_adversary
from jaxtar.meta.estimators import MetaResult, make_setup, meta_core, meta_value_and_grad
from jaxtar.meta.spec import ON_NONFINITE, Estimator, TamperSchedule, warn_if_zeroed

PyTree = Any
REDUCTIONS = ("mean", "sum", "none")


@dataclass(frozen=True)
class AdversaryGroup:
    """Adversaries that share one compiled, vmapped unroll.

    Example:
        >>> g = AdversaryGroup((Adversary(lr=1e-5, steps=4), Adversary(lr=2e-5, steps=2)))
        >>> g.hyperparams()["learning_rate"].tolist(), g.active_steps().tolist()
        ([9.999999747378752e-06, 1.9999999494757503e-05], [4, 2])
    """

    adversaries: tuple[Adversary, ...]

    def __post_init__(self) -> None:
        if not self.adversaries:
            raise ValueError("AdversaryGroup needs at least one adversary")
        keys = {a.static_key() for a in self.adversaries}
        if len(keys) > 1:
            raise ValueError(
                f"adversaries in one group must share optimiser/schedule/clip/LoRA, got {sorted(map(str, keys))}"
            )

    def __len__(self) -> int:
        return len(self.adversaries)

    @property
    def max_steps(self) -> int:
        """The scan length: the longest attack in the group."""
        return max(a.steps for a in self.adversaries)

    @property
    def reference(self) -> Adversary:
        """The group's static structure (its first adversary, stretched to `max_steps`)."""
        return dataclasses.replace(self.adversaries[0], steps=self.max_steps)

    def hyperparams(self) -> dict[str, jax.Array]:
        """Hyper-parameters stacked along a leading adversary axis (default float dtype)."""
        names = self.adversaries[0].hyperparams()
        dtype = jnp.result_type(float)
        return {k: jnp.asarray([a.hyperparams()[k] for a in self.adversaries], dtype) for k in names}

    def active_steps(self) -> jax.Array | None:
        """Per-adversary step counts, or None when all equal `max_steps` (no masking needed)."""
        steps = [a.steps for a in self.adversaries]
        return None if min(steps) == self.max_steps else jnp.asarray(steps, jnp.int32)

    def weights(self, schedule: TamperSchedule) -> jax.Array:
        """Tamper-record weights [A, m] (each relative to its adversary's own step count)."""
        return jnp.asarray(np.stack([schedule.weights(a.steps, self.max_steps) for a in self.adversaries]))

    def keys(self, key: jax.Array) -> jax.Array:
        """One key per adversary: `fold_in(key, adversary.seed)`."""
        return jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.asarray([a.seed for a in self.adversaries]))


def group_adversaries(adversaries: tuple[Adversary, ...] | list[Adversary]) -> tuple[AdversaryGroup, ...]:
    """Split adversaries into vmappable groups (first-appearance order).

    Example:
        >>> gs = group_adversaries([Adversary("adamw"), Adversary("sgd"), Adversary("adamw", lr=1e-4)])
        >>> [len(g) for g in gs]
        [2, 1]
    """
    groups: dict[tuple, list[Adversary]] = {}
    for adv in adversaries:
        groups.setdefault(adv.static_key(), []).append(adv)
    return tuple(AdversaryGroup(tuple(v)) for v in groups.values())


def _constrain(tree: PyTree, mesh: Mesh | None, lead: int) -> PyTree:
    """Shard axis `lead` of every leaf along the mesh's "adversary" axis (no-op without one)."""
    if mesh is None or "adversary" not in mesh.axis_names or mesh.shape["adversary"] == 1:
        return tree
    n = mesh.shape["adversary"]

    def one(x):
        if x.ndim <= lead or x.shape[lead] % n:
            return x
        # every other axis UNCONSTRAINED: a None would force it replicated and undo e.g. the batch's data sharding
        free = P.UNCONSTRAINED
        spec = P(*([free] * lead), "adversary", *([free] * (x.ndim - lead - 1)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return jax.tree.map(one, tree)


def vmap_meta_value_and_grad(
    problem: AttackProblem,
    defended: PyTree,
    group: AdversaryGroup,
    batches: PyTree,
    tamper_batch: PyTree,
    *,
    key: jax.Array,
    schedule: TamperSchedule,
    estimator: Estimator | None = None,
    hyperparams: dict[str, jax.Array] | None = None,
    tamper_batch_per_adversary: bool = False,
    chunk_size: int | None = None,
    reduce: str = "mean",
    mesh: Mesh | None = None,
    on_nonfinite: str = "zero",
) -> MetaResult:
    """`meta_value_and_grad` for a group of adversaries as one vmapped computation.

    Args:
        problem: the attack.
        defended: the defended params (shared by all adversaries).
        group: the adversaries.
        batches: per-adversary, per-step batches: leading axes [A, K] with K = `group.max_steps`.
        tamper_batch: the tamper batch, shared, or [A, ...] with `tamper_batch_per_adversary`.
        key: base key (each adversary gets `fold_in(key, seed)`).
        schedule: tamper records and weights.
        estimator: default exact.
        hyperparams: [A]-stacked hyper-parameters (default `group.hyperparams()`); their per-adversary
            gradients come back in `hyper_grads` ([A]).
        chunk_size: adversaries per chunk (None: all at once).
        reduce: "mean" (over adversaries with finite gradients), "sum", or "none" (grads stacked [A, ...]).
        mesh: shard the adversary axis along its "adversary" axis.
        on_nonfinite: see `meta_value_and_grad`; with "zero" a diverged adversary contributes nothing, its
            `aux.is_finite` entry is False (``jnp.sum(~res.aux.is_finite)`` adversaries were zeroed) and an eager
            call warns.

    Returns:
        MetaResult with value [A], reduced grads (or [A, ...]), hyper_grads [A], aux with a leading A axis.
    """
    res = _vmap_meta(
        problem, defended, group, batches, tamper_batch, key=key, schedule=schedule, estimator=estimator,
        hyperparams=hyperparams, tamper_batch_per_adversary=tamper_batch_per_adversary, chunk_size=chunk_size,
        reduce=reduce, mesh=mesh, on_nonfinite=on_nonfinite,
    )  # fmt: skip
    warn_if_zeroed(res.aux.is_finite, on_nonfinite, "vmap_meta_value_and_grad")
    return res


def _vmap_meta(
    problem: AttackProblem,
    defended: PyTree,
    group: AdversaryGroup,
    batches: PyTree,
    tamper_batch: PyTree,
    *,
    key: jax.Array,
    schedule: TamperSchedule,
    estimator: Estimator | None,
    hyperparams: dict[str, jax.Array] | None,
    tamper_batch_per_adversary: bool,
    chunk_size: int | None,
    reduce: str,
    mesh: Mesh | None,
    on_nonfinite: str,
) -> MetaResult:
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    num_steps = jax.tree.leaves(batches)[0].shape[1]
    if num_steps != group.max_steps:
        raise ValueError(f"batches have {num_steps} steps, the group's longest attack has {group.max_steps}")
    estimator = estimator or Estimator()
    if estimator.kind == "truncated" and estimator.truncation < num_steps and group.active_steps() is not None:
        steps = sorted({a.steps for a in group.adversaries})
        raise ValueError(
            f"the truncated estimator differentiates the last {estimator.truncation} of the group's {num_steps} scan "
            f"steps, which are masked no-ops for its shorter attacks (steps {steps}): put adversaries with different "
            "step counts in separate groups"
        )
    cfg = make_setup(problem, group.reference, num_steps=num_steps, schedule=schedule, estimator=estimator)
    n = len(group)
    per_adv = dict(
        hp=group.hyperparams() if hyperparams is None else dict(hyperparams),
        active=group.active_steps(),
        weights=group.weights(schedule),
        batches=batches,
        tamper=tamper_batch if tamper_batch_per_adversary else None,
        key=group.keys(key),
    )
    shared_tamper = None if tamper_batch_per_adversary else tamper_batch

    def one(x):
        tb = shared_tamper if x["tamper"] is None else x["tamper"]
        return meta_core(cfg, defended, x["hp"], x["active"], x["weights"], x["batches"], tb, x["key"], on_nonfinite)

    def vmapped(xs):
        return jax.vmap(one)(xs)

    c = n if chunk_size is None else min(chunk_size, n)
    if c < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    pad = (-n) % c
    valid = jnp.arange(n + pad) < n
    if pad:  # pad with copies of the last adversary; they are masked out of every reduction
        per_adv = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]), per_adv)

    if reduce == "none" or c == n + pad:
        xs = _constrain(per_adv, mesh, 0)
        res = vmapped(xs) if c == n + pad else jax.lax.map(one, xs, batch_size=c)
        res = jax.tree.map(lambda x: x[:n], res)
        if reduce != "none":
            res = res._replace(grads=_reduce(res.grads, res.aux.is_finite, reduce))
        return res

    chunks = jax.tree.map(lambda x: x.reshape((-1, c) + x.shape[1:]), (per_adv, valid))

    def body(acc, inp):
        xs, ok = inp
        res = vmapped(_constrain(xs, mesh, 0))
        w = (ok & res.aux.is_finite).astype(jnp.result_type(float))
        g_sum, count = acc
        g_sum = jax.tree.map(lambda a, g: a + jnp.tensordot(w, g, axes=1).astype(a.dtype), g_sum, res.grads)
        return (g_sum, count + w.sum()), res._replace(grads=None)

    zeros = jax.tree.map(jnp.zeros_like, defended)
    (g_sum, count), res = jax.lax.scan(body, (zeros, jnp.zeros(())), chunks)
    res = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[:n], res)
    grads = g_sum if reduce == "sum" else jax.tree.map(lambda g: g / jnp.maximum(count, 1.0), g_sum)
    return res._replace(grads=grads)


class GroupsResult(NamedTuple):
    """`grouped_meta_value_and_grad`'s output: the mean gradient over every adversary with finite gradients, how many
    that were, each group's own `MetaResult` (its grads summed over its finite adversaries), and how many
    adversaries' meta-gradients were non-finite (zeroed under ``on_nonfinite="zero"``, int32)."""

    grads: PyTree
    finite_count: jax.Array
    groups: tuple[MetaResult, ...]
    nonfinite_count: jax.Array


def grouped_meta_value_and_grad(
    problem: AttackProblem,
    defended: PyTree,
    groups: Sequence[AdversaryGroup],
    batches: Sequence[PyTree],
    tamper_batch: PyTree,
    *,
    key: jax.Array,
    schedule: TamperSchedule,
    estimator: Estimator | None = None,
    hyperparams: Sequence[dict[str, jax.Array]] | None = None,
    chunk_size: int | None = None,
    mesh: Mesh | None = None,
    on_nonfinite: str = "zero",
) -> GroupsResult:
    """The meta-gradient averaged over adversaries of several optimiser kinds: one vmapped computation per group.

    Args:
        groups: e.g. `group_adversaries(adversaries)`.
        batches: one batch pytree per group, leading axes [A_g, K_g].
        tamper_batch: shared by every adversary.
        hyperparams: one [A_g]-stacked dict per group (default: each group's own); their gradients come back in
            each group's `hyper_grads`.
        Other arguments: as `vmap_meta_value_and_grad` (the same for every group).

    Example:
        >>> from jaxtar.attacks import full_parameter_problem
        >>> prob = full_parameter_problem(lambda w, b: jnp.sum((w - b) ** 2), lambda w, b: jnp.sum(w * b))
        >>> groups = group_adversaries([Adversary("sgd", lr=0.25, steps=1), Adversary("adam", lr=0.1, steps=1)])
        >>> res = grouped_meta_value_and_grad(prob, jnp.zeros(2), groups, [jnp.ones((1, 1, 2))] * 2, jnp.ones(2),
        ...                                   key=jax.random.key(0), schedule=TamperSchedule(), estimator=Estimator())
        >>> int(res.finite_count), [round(float(g), 3) for g in res.grads]  # SGD gives 0.5, Adam's sign-like step 1
        (2, [0.75, 0.75])
    """
    if len(groups) != len(batches) or (hyperparams is not None and len(hyperparams) != len(groups)):
        raise ValueError(f"{len(groups)} groups but {len(batches)} batch pytrees / hyper-parameter dicts")
    hyperparams = [None] * len(groups) if hyperparams is None else hyperparams
    if not groups:
        raise ValueError("grouped_meta_value_and_grad needs at least one group")
    results = tuple(
        _vmap_meta(
            problem,
            defended,
            group,
            b,
            tamper_batch,
            key=key,
            schedule=schedule,
            estimator=estimator,
            hyperparams=hp,
            tamper_batch_per_adversary=False,
            chunk_size=chunk_size,
            reduce="sum",
            mesh=mesh,
            on_nonfinite=on_nonfinite,
        )
        for group, b, hp in zip(groups, batches, hyperparams)
    )
    count = sum(r.aux.is_finite.sum() for r in results).astype(jnp.result_type(float))
    nonfinite = sum(jnp.sum(~r.aux.is_finite) for r in results).astype(jnp.int32)
    total = jax.tree.map(lambda *g: sum(g), *(r.grads for r in results))
    grads = jax.tree.map(lambda g: g / jnp.maximum(count, 1.0).astype(g.dtype), total)
    warn_if_zeroed(jnp.concatenate([r.aux.is_finite for r in results]), on_nonfinite, "grouped_meta_value_and_grad")
    return GroupsResult(grads, count, results, nonfinite)


def jit_meta_value_and_grad(
    problem: AttackProblem,
    *,
    adversary: Adversary | None = None,
    schedule: TamperSchedule | None = None,
    estimator: Estimator | None = None,
    on_nonfinite: str = "zero",
) -> Callable[..., MetaResult]:
    """`meta_value_and_grad` under `jax.jit`, the adversary passed once (with the problem).

    Args:
        problem: the attack, with `tamper_loss`; built by `model_attack_problem(adversary, ...)` it carries its
            adversary.
        adversary: only needed when the problem has none (or to run other numbers on the same structure).
        schedule, estimator, on_nonfinite: as `meta_value_and_grad` (defaults: the final step only, "exact",
            "zero").

    Returns:
        ``step(defended, batches, tamper_batch, key, hyperparams=None) -> MetaResult``: compiled on its first call
        for each shape; `batches` must have `adversary.steps` entries along their leading axis. Called from Python
        it warns when a non-finite meta-gradient was zeroed; called inside another `jax.jit` it stays silent (use
        `aux.is_finite`).

    Example:
        >>> from jaxtar.attacks import full_parameter_problem
        >>> adv = Adversary("sgd", lr=0.25, steps=1)
        >>> prob = full_parameter_problem(lambda w, b: jnp.sum((w - b) ** 2), lambda w, b: jnp.sum(w * b),
        ...                               adversary=adv)
        >>> step = jit_meta_value_and_grad(prob, estimator=Estimator("remat"))
        >>> step(jnp.zeros(2), jnp.ones((1, 2)), jnp.ones(2), jax.random.key(0)).grads.tolist()
        [0.5, 0.5]
    """
    adversary = resolve_adversary(problem, adversary)
    estimator = Estimator() if estimator is None else estimator
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}")

    @jax.jit
    def compiled(defended, batches, tamper_batch, key, hyperparams):
        return meta_value_and_grad(
            problem, defended, batches, tamper_batch, adversary=adversary, key=key, schedule=schedule,
            estimator=estimator, hyperparams=hyperparams, on_nonfinite=on_nonfinite,
        )  # fmt: skip

    def step(defended: PyTree, batches: PyTree, tamper_batch: PyTree, key: jax.Array, hyperparams=None) -> MetaResult:
        check_steps(adversary, jax.tree.leaves(batches)[0].shape[0])
        res = compiled(defended, batches, tamper_batch, key, hyperparams)
        warn_if_zeroed(res.aux.is_finite, on_nonfinite, "jit_meta_value_and_grad")
        return res

    return step


def _reduce(grads: PyTree, finite: jax.Array, reduce: str) -> PyTree:
    w = finite.astype(jnp.result_type(float))
    total = jax.tree.map(lambda g: jnp.tensordot(w, g, axes=1).astype(g.dtype), grads)
    if reduce == "sum":
        return total
    return jax.tree.map(lambda g: g / jnp.maximum(w.sum(), 1.0), total)
