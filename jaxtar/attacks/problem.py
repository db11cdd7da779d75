"""What an attack trains and on what loss: `AttackProblem` and its builders.

* `attack_init(defended, key) -> trainable`: the attacker's starting point. Full-parameter attacks return the
  defended params; LoRA attacks return fresh adapters (the defended params stay frozen but still receive the
  meta-gradient through the attack); MLAC returns (defended trunk, fresh head).
* `attack_loss(defended, trainable, batch) -> scalar`: the loss one attack step minimises.
* `tamper_loss(defended, trainable, batch) -> scalar`: the defence's loss at the attacked weights (optional here;
  the meta-gradient estimators need it).
* `adversary`: optionally, the `Adversary` the problem was built for (`model_attack_problem` records it), so that
  `jaxtar.attacks.unroll.unroll` and the meta-gradient front doors need not be given it a second time.

Users rarely write these three functions: `model_attack_problem(adversary, attack_loss, tamper_loss, model=)` builds
them from losses of `(params, batch)` (full-parameter attacks) or `(params, batch, lora)` (either kind).

Example:
    >>> import jax.numpy as jnp
    >>> prob = full_parameter_problem(lambda w, b: jnp.sum((w - b) ** 2), lambda w, b: jnp.sum(w * b))
    >>> float(prob.attack_loss(None, jnp.zeros(2), jnp.ones(2)))
    2.0
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax

from jaxtar.attacks.adversary import Adversary

PyTree = Any


@dataclass(frozen=True)
class AttackProblem:
    """What the attacker trains (see the module docstring for the three functions).

    Example:
        >>> import jax.numpy as jnp
        >>> p = full_parameter_problem(lambda w, b: jnp.sum((w - b) ** 2))
        >>> p.attack_loss(None, jnp.ones(2), jnp.zeros(2)).item()
        2.0
    """

    attack_init: Callable[[PyTree, jax.Array], PyTree]
    attack_loss: Callable[[PyTree, PyTree, PyTree], jax.Array]
    tamper_loss: Callable[[PyTree, PyTree, PyTree], jax.Array] | None = None
    adversary: Adversary | None = None

    def __post_init__(self) -> None:
        for name in ("attack_init", "attack_loss"):
            if not callable(getattr(self, name)):
                raise TypeError(f"AttackProblem.{name} must be callable")
        if self.tamper_loss is not None and not callable(self.tamper_loss):
            raise TypeError("AttackProblem.tamper_loss must be callable or None")
        if self.adversary is not None and not isinstance(self.adversary, Adversary):
            raise TypeError(
                f"AttackProblem.adversary must be an Adversary or None, got {type(self.adversary).__name__}"
            )


def resolve_adversary(problem: AttackProblem, adversary: Adversary | None = None) -> Adversary:
    """The adversary to run `problem` with: `adversary` when given, else the one the problem was built for.

    An explicit adversary may change numbers (lr, steps, ...) but not the problem's structure: one whose `lora`
    differs from the problem's own adversary's is refused (the problem's `attack_init` builds the other kind).

    Example:
        >>> adv = Adversary("sgd", lr=0.1, steps=2)
        >>> resolve_adversary(model_attack_problem(adv, lambda p, b: 0.0)) is adv
        True
        >>> resolve_adversary(full_parameter_problem(lambda p, b: 0.0))
        Traceback (most recent call last):
        TypeError: no adversary: pass adversary=..., or build the problem with one ...
    """
    if adversary is None:
        if problem.adversary is None:
            raise TypeError(
                "no adversary: pass adversary=..., or build the problem with one (model_attack_problem(adversary, "
                "...), full_parameter_problem(..., adversary=...))"
            )
        return problem.adversary
    if not isinstance(adversary, Adversary):
        raise TypeError(f"adversary must be an Adversary, got {type(adversary).__name__}")
    if problem.adversary is not None and adversary.lora != problem.adversary.lora:
        raise ValueError(
            f"the problem was built for an attack with lora={problem.adversary.lora} but is run with "
            f"lora={adversary.lora}; build the problem from the adversary you run (or leave adversary= out)"
        )
    return adversary


def _loss_arity(fn: Callable, name: str) -> int:
    """3 when `fn` takes `(params, batch, lora)`, 2 when it takes only `(params, batch)`; other signatures refused.

    A function that accepts both (``lora=None`` default, ``*args``) gets three; one whose signature cannot be read
    (some builtins) is assumed to take three, the documented convention.
    """
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 3
    kinds = inspect.Parameter
    positional = [p for p in sig.parameters.values() if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
    required = sum(p.default is kinds.empty for p in positional)
    varargs = any(p.kind is kinds.VAR_POSITIONAL for p in sig.parameters.values())
    keyword = [p.name for p in sig.parameters.values() if p.kind is kinds.KEYWORD_ONLY and p.default is kinds.empty]
    for n in (3, 2):
        if not keyword and required <= n and (varargs or len(positional) >= n):
            return n
    raise TypeError(
        f"{name} must take (params, batch) or (params, batch, lora), got a function of {sig}"
        + (f" with required keyword-only {keyword}" if keyword else "")
    )


def full_parameter_problem(
    loss: Callable[[PyTree, PyTree], jax.Array],
    tamper: Callable[[PyTree, PyTree], jax.Array] | None = None,
    *,
    adversary: Adversary | None = None,
) -> AttackProblem:
    """A full-parameter attack: the attacker trains the defended params themselves.

    Args:
        loss: `loss(params, batch)` the attacker minimises.
        tamper: `tamper(params, batch)` the defender evaluates at the attacked params.
        adversary: optionally, the adversary to remember (then `unroll` and the meta-gradient calls need not be
            given it); it must be a full-parameter one.
    """
    if adversary is not None and adversary.lora is not None:
        raise ValueError("full_parameter_problem got a LoRA adversary; use model_attack_problem or lora_problem")
    return AttackProblem(
        attack_init=lambda defended, key: defended,
        attack_loss=lambda defended, trainable, batch: loss(trainable, batch),
        tamper_loss=None if tamper is None else (lambda defended, trainable, batch: tamper(trainable, batch)),
        adversary=adversary,
    )


def lora_problem(
    init_adapters: Callable[[jax.Array], PyTree],
    loss: Callable[[PyTree, PyTree, PyTree], jax.Array],
    tamper: Callable[[PyTree, PyTree, PyTree], jax.Array] | None = None,
) -> AttackProblem:
    """A LoRA attack: fresh adapters are trained on top of the frozen defended params.

    Args:
        init_adapters: `init_adapters(key)` -> adapter pytree (e.g. `jaxtar.models.lora.init_lora`).
        loss: `loss(defended, adapters, batch)`.
        tamper: `tamper(defended, adapters, batch)`.
    """
    return AttackProblem(attack_init=lambda defended, key: init_adapters(key), attack_loss=loss, tamper_loss=tamper)


def _full_parameter_loss(f: Callable, arity: int) -> Callable[[PyTree, PyTree, PyTree], jax.Array]:
    """`f(params, batch[, None])` as an `AttackProblem` loss of (defended, trainable, batch)."""
    if arity == 3:
        return lambda defended, trainable, batch: f(trainable, batch, None)
    return lambda defended, trainable, batch: f(trainable, batch)


def model_attack_problem(
    adversary: Adversary,
    attack_loss: Callable[..., jax.Array],
    tamper_loss: Callable[..., jax.Array] | None = None,
    *,
    model: Any = None,
) -> AttackProblem:
    """The full-parameter or LoRA attack `adversary` describes, on a `jaxtar.models` model.

    Each loss takes `(params, batch, lora)` or, for a full-parameter attack, just `(params, batch)`; the choice is
    read once here from the function's signature (a `lora=None` default counts as taking it).

    Args:
        adversary: its `lora` decides full-parameter (None) or LoRA. The problem remembers it, so `unroll` and
            `jit_meta_value_and_grad` need not be given it again.
        attack_loss: `attack_loss(params, batch, lora)` with `lora` a `LoraParams` or None (pass it to
            `model.apply(..., lora=lora)`; LoRA dropout needs a per-step key in the batch), or
            `attack_loss(params, batch)` for a full-parameter adversary.
        tamper_loss: the defence's loss at the attacked weights, the same convention.
        model: the `jaxtar.models.Model` (needed for LoRA).

    Raises:
        TypeError: a loss of another signature, or a two-argument loss with a LoRA adversary (it could not see the
            adapters).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxtar.attacks.unroll import unroll
        >>> adv = Adversary("sgd", lr=0.25, steps=1)
        >>> prob = model_attack_problem(adv, lambda w, b: jnp.sum((w - b) ** 2))  # (params, batch) is enough
        >>> unroll(prob, jnp.zeros(2), batches=jnp.ones((1, 2)), key=jax.random.key(0)).trainable.tolist()
        [0.5, 0.5]
    """
    losses = {"attack_loss": attack_loss, "tamper_loss": tamper_loss}
    arity = {k: _loss_arity(f, k) for k, f in losses.items() if f is not None}
    if adversary.lora is None:
        return AttackProblem(
            attack_init=lambda defended, key: defended,
            attack_loss=_full_parameter_loss(attack_loss, arity["attack_loss"]),
            tamper_loss=None if tamper_loss is None else _full_parameter_loss(tamper_loss, arity["tamper_loss"]),
            adversary=adversary,
        )
    two = sorted(k for k, n in arity.items() if n == 2)
    if two:
        raise TypeError(
            f"a LoRA adversary trains adapters the loss must see: {', '.join(two)} must take (params, batch, lora) "
            "and pass lora to model.apply(..., lora=lora)"
        )
    if model is None:
        raise ValueError("a LoRA adversary needs the model (model=...) to shape its adapters")
    from jaxtar.models.lora import init_lora

    config = adversary.lora.to_config()
    tamper = tamper_loss
    return AttackProblem(
        attack_init=lambda defended, key: init_lora(key, model, defended, config),
        attack_loss=lambda defended, trainable, batch: attack_loss(defended, batch, trainable),
        tamper_loss=None if tamper is None else (lambda defended, trainable, batch: tamper(defended, batch, trainable)),
        adversary=adversary,
    )
