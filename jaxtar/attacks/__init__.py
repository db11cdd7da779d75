"""Simulated fine-tuning attacks: adversary specs, optax builders, the differentiable unroll, named suites.

Example:
    >>> from jaxtar.attacks import Adversary, full_parameter_problem, unroll
    >>> import jax, jax.numpy as jnp
    >>> prob = full_parameter_problem(lambda w, b: jnp.sum((w - b) ** 2))
    >>> unroll(prob, jnp.zeros(2), Adversary("sgd", lr=0.25, steps=1), jnp.ones((1, 2)),
    ...        key=jax.random.key(0)).trainable.tolist()
    [0.5, 0.5]
"""

from jaxtar.attacks.adversary import (
    ADAM_FAMILY,
    OPTIMIZERS,
    SCHEDULES,
    Adversary,
    LoraSpec,
    Schedule,
    sample_switch_step,
    with_seeds,
)
from jaxtar.attacks.optimizers import AttackOptimizer, lr_multiplier, make_optimizer
from jaxtar.attacks.suites import (
    SUITES,
    get_suite,
    mlac_attackers,
    qi_2024_attacks,
    red_team_suite,
    refusal_red_team,
    sample_adversary,
    tar_train_adversaries,
)
from jaxtar.attacks.unroll import (
    AttackProblem,
    UnrollResult,
    full_parameter_problem,
    lora_problem,
    model_attack_problem,
    unroll,
)

__all__ = [
    "ADAM_FAMILY",
    "OPTIMIZERS",
    "SCHEDULES",
    "SUITES",
    "Adversary",
    "AttackOptimizer",
    "AttackProblem",
    "LoraSpec",
    "Schedule",
    "UnrollResult",
    "full_parameter_problem",
    "get_suite",
    "lora_problem",
    "lr_multiplier",
    "make_optimizer",
    "mlac_attackers",
    "model_attack_problem",
    "qi_2024_attacks",
    "red_team_suite",
    "refusal_red_team",
    "sample_adversary",
    "sample_switch_step",
    "tar_train_adversaries",
    "unroll",
    "with_seeds",
]
