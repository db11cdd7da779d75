"""Simulated fine-tuning attacks: adversary specs, optax builders, the differentiable unroll, named suites.

An `Adversary` is data: `Adversary(optimizer, lr=, steps=, schedule=, clip_norm=, lora=, ...)`, with `optimizer`
one of `OPTIMIZERS`:

- "sgd", "sgd_momentum" (heavy ball, `momentum`), "sgd_nesterov" (`momentum`);
- "adam", "adamw", "schedule_free_adamw" (`b1`, `b2`, `eps`, `eps_root`; `eps_root` > 0 when differentiated);
- "adadelta" (`rho`, `eps`) and "lion" (`b1`, `b2`);

every kind also reads `lr` (scaled by a `Schedule`: "constant", "linear_warmup", "warmup_cosine", "sgdr") and
`weight_decay`. `model_attack_problem(adversary, attack_loss, tamper_loss, model=)` turns losses of
`(params, batch)` or `(params, batch, lora)` into an `AttackProblem` that remembers its adversary; `unroll` runs it
on batches with a leading axis of at most `adversary.steps` (the meta-gradient calls: exactly `adversary.steps`).

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
    check_steps,
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
    resolve_adversary,
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
    "check_steps",
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
    "resolve_adversary",
    "sample_adversary",
    "sample_switch_step",
    "tar_train_adversaries",
    "unroll",
    "with_seeds",
]
