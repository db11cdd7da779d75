"""The blocking evaluation's TPE search of the attacker's learning rate (``BlockingConfig.search = "tpe"``).

The MLAC paper picked its attacker's hyper-parameters with TPE; `jaxtar.eval.blocking` does too when asked (its
default is a fixed grid). :func:`tpe_search` runs one in-memory Optuna study per n, each with its own seeded
``TPESampler`` (seeded from ``seed`` and n, so a run is reproducible and every n gets a different stream), drawing the
lr log-uniformly from [low, high]. TPE is sequential, so trials are asked in rounds of ``batch`` per n: every study
asks its round's trials, all of them (every n) are scored by one call of ``evaluate`` (one vectorised attacker run),
then each study is told its scores. The first round is TPE's random start-up (``n_startup_trials = batch``); later
rounds sample TPE's model of the trials told so far. ``evaluate`` always gets ``len(ns) * batch`` points (a short
last round is padded with copies of its last point, whose scores are dropped), so a jitted attacker compiles once.

A trial's value is the best of its scores (one per step budget: a budget is a prefix of the same run) and the winner
is the first trial with the best value (:func:`best_trial`), the rule the grid uses.

Example:
    >>> f = lambda points: np.array([[-((np.log10(lr) + 3) ** 2)] for _, lr in points])  # the best lr: 1e-3
    >>> trials = tpe_search(f, (20,), low=1e-5, high=1e-1, trials=12, batch=4, seed=0)
    >>> len(trials[20]), sorted(trials[20][0])
    (12, ['lr', 'score', 'scores', 'trial'])
    >>> round(float(np.log10(best_trial(trials[20])["lr"])), 2)  # within 0.15 decades of the best
    -3.15
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxtar.errors import ConfigError

INSTALL_HINT = "pip install 'jaxtar[sweep]'"


def require_optuna() -> Any:
    """The ``optuna`` module, or a `ConfigError` saying how to install it.

    Example:
        >>> require_optuna().__name__  # doctest: +SKIP
        'optuna'
    """
    try:
        import optuna
    except ImportError:
        raise ConfigError(f"the blocking evaluation's search tpe needs optuna, which is not installed: "
                          f"{INSTALL_HINT}") from None  # fmt: skip
    return optuna


def study_seed(seed: int | Sequence[int], n: int) -> int:
    """The sampler seed of n's study: a 32-bit hash of (``seed``..., n).

    Example:
        >>> study_seed(0, 20) == study_seed((0,), 20) != study_seed(0, 50)
        True
    """
    entropy = [int(s) % 2**32 for s in ((seed,) if isinstance(seed, int) else seed)] + [int(n) % 2**32]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def best_trial(trials: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The first trial with the highest ``score``.

    Example:
        >>> best_trial([{"lr": 1e-3, "score": 0.6}, {"lr": 1e-2, "score": 0.7}, {"lr": 1e-4, "score": 0.7}])["lr"]
        0.01
    """
    return max(trials, key=lambda t: t["score"])


def tpe_search(
    evaluate: Callable[[list[tuple[int, float]]], np.ndarray],
    ns: Sequence[int],
    *,
    low: float,
    high: float,
    trials: int,
    batch: int,
    seed: int | Sequence[int],
) -> dict[int, list[dict[str, Any]]]:
    """TPE over the lr in [low, high] (log-uniform), ``trials`` per n, asked ``batch`` at a time (module docstring).

    Args:
        evaluate: (n, lr) points -> scores [points, budgets] (higher is better).
        ns: the attacker's training-set sizes; one study each.
        low, high: the lr range.
        trials: trials per n.
        batch: trials per n asked before the studies are told.
        seed: seeds the samplers (with n).

    Returns:
        n -> trials in the order asked: ``{"trial", "lr", "score" (the best of scores), "scores"}``.

    Example:
        >>> f = lambda points: np.array([[lr, 2 * lr] for _, lr in points])  # bigger is better
        >>> out = tpe_search(f, (20, 50), low=1e-4, high=1e-2, trials=3, batch=2, seed=0)
        >>> [t["trial"] for t in out[50]], out[20][0]["score"] == out[20][0]["scores"][1]
        ([0, 1, 2], True)
    """
    optuna = require_optuna()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        sampler = lambda n: optuna.samplers.TPESampler(seed=study_seed(seed, n), n_startup_trials=batch)
        studies = {n: optuna.create_study(direction="maximize", sampler=sampler(n)) for n in ns}
        out: dict[int, list[dict[str, Any]]] = {n: [] for n in ns}
        for start in range(0, trials, batch):
            asked = [(n, studies[n].ask()) for n in ns for _ in range(min(batch, trials - start))]
            points = [(n, t.suggest_float("lr", low, high, log=True)) for n, t in asked]
            padded = points + points[-1:] * (len(ns) * batch - len(points))
            scores = np.asarray(evaluate(padded), np.float64)[: len(points)]
            for (n, t), (_, lr), row in zip(asked, points, scores):
                value = float(np.max(row))
                studies[n].tell(t, value)
                out[n].append({"trial": t.number, "lr": float(lr), "score": value, "scores": [float(s) for s in row]})
        return out
    finally:
        optuna.logging.set_verbosity(verbosity)
