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
"""

from jaxtar.meta.estimators import MetaAux, MetaResult, meta_value_and_grad
from jaxtar.meta.memory import MemoryEstimate, Workload, choose_plan, compiled_peak_bytes, predict_peak_bytes
from jaxtar.meta.spec import ESTIMATORS, Estimator, TamperSchedule
from jaxtar.meta.vectorize import (
    AdversaryGroup,
    GroupsResult,
    group_adversaries,
    grouped_meta_value_and_grad,
    vmap_meta_value_and_grad,
)

__all__ = [
    "ESTIMATORS",
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
    "meta_value_and_grad",
    "predict_peak_bytes",
    "vmap_meta_value_and_grad",
]
