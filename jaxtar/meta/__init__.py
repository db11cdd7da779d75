"""Meta-gradients through simulated attacks: six estimators, vmapped adversary groups, a memory planner.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxtar.attacks import Adversary, full_parameter_problem
    >>> from jaxtar.meta import Estimator, meta_value_and_grad
    >>> prob = full_parameter_problem(lambda w, b: jnp.sum((w - b) ** 2), lambda w, b: jnp.sum(w * b))
    >>> res = meta_value_and_grad(prob, jnp.zeros(2), jnp.ones((1, 2)), jnp.ones(2),
    ...                           adversary=Adversary("sgd", lr=0.25, steps=1), key=jax.random.key(0),
    ...                           estimator=Estimator("remat"))
    >>> res.grads.tolist()
    [0.5, 0.5]

Compiled, the adversary given once (`model_attack_problem(adversary, ...)` records it in the problem; so does
`full_parameter_problem(..., adversary=)`):

    >>> prob = full_parameter_problem(lambda w, b: jnp.sum((w - b) ** 2), lambda w, b: jnp.sum(w * b),
    ...                               adversary=Adversary("sgd", lr=0.25, steps=1))
    >>> step = jit_meta_value_and_grad(prob, estimator=Estimator("remat"))  # step(params, batches, tamper, key)
    >>> step(jnp.zeros(2), jnp.ones((1, 2)), jnp.ones(2), jax.random.key(0)).grads.tolist()
    [0.5, 0.5]

(the same as the one-liner ``jax.jit(lambda p, b, t, k: meta_value_and_grad(prob, p, b, t, adversary=adv,
key=k, ...))``, which does not warn). Non-finite meta-gradients (a diverged attack) are replaced by zeros under
the default ``on_nonfinite="zero"``: ``aux.is_finite`` marks them, `GroupsResult.nonfinite_count` counts them, and
the eager front doors (`jit_meta_value_and_grad`'s step, `vmap_meta_value_and_grad` and
`grouped_meta_value_and_grad` called outside `jax.jit`) warn; ``on_nonfinite="keep"`` returns them as computed.
"""

from jaxtar.meta.estimators import MetaAux, MetaResult, meta_value_and_grad
from jaxtar.meta.memory import MemoryEstimate, Workload, choose_plan, compiled_peak_bytes, predict_peak_bytes
from jaxtar.meta.spec import ESTIMATORS, ON_NONFINITE, Estimator, TamperSchedule, warn_if_zeroed
from jaxtar.meta.vectorize import (
    AdversaryGroup,
    GroupsResult,
    group_adversaries,
    grouped_meta_value_and_grad,
    jit_meta_value_and_grad,
    vmap_meta_value_and_grad,
)

__all__ = [
    "ESTIMATORS",
    "ON_NONFINITE",
    "AdversaryGroup",
    "Estimator",
    "MemoryEstimate",
    "MetaAux",
    "MetaResult",
    "TamperSchedule",
    "Workload",
    "choose_plan",
    "compiled_peak_bytes",
    "GroupsResult",
    "group_adversaries",
    "grouped_meta_value_and_grad",
    "jit_meta_value_and_grad",
    "meta_value_and_grad",
    "predict_peak_bytes",
    "vmap_meta_value_and_grad",
    "warn_if_zeroed",
]
