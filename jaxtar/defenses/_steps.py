"""The building blocks of a defence's step, shared by every defence and by the loop: the outer optimiser
(schedule-free AdamW), jitting with committed inputs, reuse of compiled steps, placement on a mesh, the step keys
and the mesh-divisibility check.

Example:
    >>> step_key(0, 3).shape
    ()
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from jaxtar.data.rows import materialise
from jaxtar.errors import InputError
from jaxtar.parallel import batch_shardings, param_shardings, shard, with_shardings

PyTree = Any


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


COMPILATION_CACHE_DIR = ".jaxtar-xla-cache"


def use_compilation_cache(run_dir: str | Path) -> Path | None:
    """Turns on JAX's persistent compilation cache in ``COMPILATION_CACHE_DIR`` beside ``run_dir`` (returned),
    unless a cache is already configured (``JAX_COMPILATION_CACHE_DIR`` or the user's own ``jax.config``: None).

    Example:
        >>> use_compilation_cache("runs/tar")  # doctest: +SKIP
        PosixPath('/home/me/runs/.jaxtar-xla-cache')
    """
    from jax.experimental.compilation_cache import compilation_cache

    if jax.config.jax_compilation_cache_dir:
        return None
    folder = Path(run_dir).absolute().parent / COMPILATION_CACHE_DIR
    compilation_cache.set_cache_dir(str(folder))
    compilation_cache.reset_cache()  # JAX decides once per process whether a cache is in use: decide again
    return folder


def schedule_free_params(params: PyTree, opt_state: PyTree) -> PyTree:
    """The evaluation (x-average) weights of a :func:`schedule_free_adamw` run."""
    return optax.contrib.schedule_free_eval_params(opt_state[1], params)


def _commit(tree: PyTree) -> PyTree:
    """Arrays placed explicitly (committed): restored checkpoints are, so fresh state must be too, or a resumed
    run would compile the step a second time for the other argument placement."""
    return jax.tree.map(lambda x: x if getattr(x, "committed", True) else jax.device_put(x, x.sharding), tree)


def jit_step(step: Callable, compiler_options: dict[str, Any] | None = None, mesh: Mesh | None = None) -> Callable:
    """``jax.jit(step)`` for ``step(params, opt_state, batches, key, frozen)``, called with committed state so that
    fresh, resumed and hand-made inputs all hit one compiled executable (``.jitted`` is the jitted function).

    On a ``mesh`` the new params and optimiser state keep the FSDP placement of `place` (the loop places its inputs
    so): left to itself XLA may shard small arrays the rule replicates, and every later step, taking the first
    step's outputs, would compile again.

    ``.donating`` is the same step with the params' and optimiser state's buffers donated to its outputs (XLA
    updates them in place: one copy of the weights and optimiser state instead of two at the step's peak). The
    training loop calls it; the inputs are deleted afterwards, so a caller that reuses them calls the plain step.

    Example:
        >>> step = jit_step(lambda p, s, b, k, f: (p + 1, s, {}))
        >>> p = jax.numpy.zeros(3); _ = step.donating(p, 0, None, None, None); p.is_deleted()
        True
    """
    if mesh is not None:
        unplaced = step

        @functools.wraps(unplaced)
        def step(params, opt_state, batches, key, frozen):
            params, opt_state, metrics = unplaced(params, opt_state, batches, key, frozen)
            params = with_shardings(params, param_shardings(params, mesh))
            return params, with_shardings(opt_state, param_shardings(opt_state, mesh)), metrics

    jitted = jax.jit(step, compiler_options=compiler_options)
    donating = jax.jit(step, compiler_options=compiler_options, donate_argnums=(0, 1))

    def call(params, opt_state, batches, key, frozen):
        return jitted(_commit(params), _commit(opt_state), batches, key, _commit(frozen))

    def call_donating(params, opt_state, batches, key, frozen):
        return donating(_commit(params), _commit(opt_state), batches, key, _commit(frozen))

    call.jitted, call.donating = jitted, call_donating
    call_donating.jitted = donating
    return call


_STEPS: dict[tuple, tuple[Callable, Any]] = {}


def cached_step(make: Callable, model: Any, *args: Any) -> tuple[Callable, Any]:
    """``make(model, *args)``, reused across runs in one process for an equal model config (jit once, reuse)."""
    key = (make.__name__, type(model.config), model.config, *args)
    try:
        hash(key)
    except TypeError:  # e.g. a config holding a dict: no sharing
        return make(model, *args)
    if key not in _STEPS:
        if len(_STEPS) >= 8:
            _STEPS.pop(next(iter(_STEPS)))
        _STEPS[key] = make(model, *args)
    return _STEPS[key]


def place_batch(batch: PyTree, mesh: Mesh | None, batch_axis: int = 0, adversary_axis: int | None = None) -> PyTree:
    """One batch where a step reads it: without a mesh read whole on the host (lazy rows made); on a mesh its batch
    axis split across (data, fsdp) and its adversary axis, if any, across adversary (axes that do not divide stay
    replicated), each process reading only the rows of its own shards."""
    if mesh is None:
        return materialise(batch)
    return shard(batch, batch_shardings(batch, mesh, batch_axis, adversary_axis))


def shard_batches(batches: dict[str, PyTree], mesh: Mesh | None, axes: Mapping[str, tuple[int, int | None]]) -> PyTree:
    """A step's batches placed by `place_batch`, each role with its axes (``axes``: `Phase.batch_axes`)."""
    return {name: place_batch(b, mesh, *axes.get(name, (0, None))) for name, b in batches.items()}


def place(tree: PyTree, mesh: Mesh | None) -> PyTree:
    """``tree`` FSDP-sharded on ``mesh`` (unchanged without one)."""
    return tree if mesh is None or tree is None else shard(tree, param_shardings(tree, mesh))


def step_key(seed: int, step: int) -> jax.Array:
    """The key of global step ``step`` (a function of (seed, step) only)."""
    return jax.random.fold_in(jax.random.key(seed), step)


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
