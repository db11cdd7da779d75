"""The settings of MLAC's blocking evaluation (``jaxtar redteam-classifier``, `jaxtar.eval.blocking`): the attacker
search (:class:`BlockingConfig`: a grid or Optuna's TPE), which data the classifiers are attacked on
(:class:`BlockingDataConfig`) and the command's outputs (:class:`BlockingOutput`).

Example:
    >>> BlockingConfig(ns=(20, 50)).ns, BlockingDataConfig().data
    ((20, 50), None)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jaxtar.config.flags import flag
from jaxtar.config.sections import check_values
from jaxtar.errors import ConfigError

MODES = ("probe", "full")
SEARCHES = ("grid", "tpe")


def log_grid(low: float, high: float, count: int) -> tuple[float, ...]:
    """``count`` log-spaced values from ``low`` to ``high`` (rounded to 3 significant digits).

    Example:
        >>> log_grid(1e-5, 1e-2, 4)
        (1e-05, 0.0001, 0.001, 0.01)
    """
    if not 0 < low <= high or count < 1:
        raise ValueError(f"log_grid needs 0 < low <= high and count >= 1, got {low}, {high}, {count}")
    ratio = high / low
    return tuple(float(f"{low * ratio ** (i / max(count - 1, 1)):.3g}") for i in range(count))


@dataclass(frozen=True)
class BlockingConfig:
    """The attacker grid, the repetition counts and the evaluation cadence (`jaxtar.eval.blocking`).

    Args:
        ns: the attacker's training-set sizes n.
        lrs: the learning-rate grid of the attacker's Adam (with search tpe: its min and max bound the lr).
        steps: the step budgets searched (multiples of eval_every).
        modes: probe (a linear head on the frozen encoder) and / or full (encoder and head fine-tuned).
        batch_size: attacker examples per step (drawn with replacement).
        eval_every: attacker steps between scored checkpoints.
        patience: early stopping after this many checkpoints without improvement (null = off).
        search_runs: runs per (mode, lr) in the search stage.
        search: how the attacker's lr is searched: grid (every lr of lrs) or tpe (Optuna's TPE sampler, lr
            log-uniform between min(lrs) and max(lrs); needs pip install 'jaxtar[sweep]').
        tpe_trials: with search tpe, the trials (lrs tried) per n and mode.
        tpe_batch: with search tpe, the trials per n asked and run together (one vectorised call) before TPE is
            told their scores; the first batch is TPE's random start-up.
        reruns: reruns per data seed of the winning setting.
        data_seeds: subsets of val1 drawn for the final stage.
        eval_examples: val2 examples scored (null = all).
        eval_batch_size: examples per scoring batch.
        chunk_size: runs vectorised together (lax.map over chunks of this many).
        num_classes: classes of the harmful task.
        label_key: the dataset column holding the harmful-task label.
        head_init_std: the std of the attacker's fresh head.
        seed: the attacker's seed (head inits, batch orders).

    Example:
        >>> BlockingConfig().lrs
        (1e-05, 0.0001, 0.001, 0.01)
        >>> BlockingConfig(search="tpe", tpe_trials=8).search
        'tpe'
        >>> BlockingConfig(search="random")
        Traceback (most recent call last):
        ...
        jaxtar.errors.ConfigError: BlockingConfig.search must be one of ('grid', 'tpe'), got 'random'
    """

    ns: tuple[int, ...] = field(default=(20, 50, 100, 200), metadata=flag(nargs="+"))
    lrs: tuple[float, ...] = field(default=log_grid(1e-5, 1e-2, 4), metadata=flag(nargs="+"))
    steps: tuple[int, ...] = field(default=(100, 300, 1000), metadata=flag(nargs="+"))
    modes: tuple[str, ...] = field(default=MODES, metadata=flag(nargs="+", metavar="{probe,full}"))
    batch_size: int = 16
    eval_every: int = 50
    patience: int | None = 5
    search_runs: int = 2
    search: str = field(default="grid", metadata=flag(metavar="{grid,tpe}"))
    tpe_trials: int = 16
    tpe_batch: int = 4
    reruns: int = 15
    data_seeds: int = 6
    eval_examples: int | None = 1000
    eval_batch_size: int = 256
    chunk_size: int = 16
    num_classes: int = 2
    label_key: str = "gender"
    head_init_std: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("ns", "lrs", "steps", "modes"):
            if not getattr(self, name):
                raise ConfigError(f"BlockingConfig.{name} must not be empty")
        if any(not isinstance(n, int) or n < 1 for n in self.ns):
            raise ConfigError(f"BlockingConfig.ns must be positive ints, got {self.ns}")
        if any(not lr > 0 for lr in self.lrs):
            raise ConfigError(f"BlockingConfig.lrs must be > 0, got {self.lrs}")
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ConfigError(f"BlockingConfig.modes must be among {MODES}, got {bad}")
        for name in ("batch_size", "eval_every", "search_runs", "reruns", "data_seeds", "eval_batch_size",
                     "chunk_size", "num_classes"):  # fmt: skip
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"BlockingConfig.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if any(not isinstance(s, int) or s < self.eval_every or s % self.eval_every for s in self.steps):
            raise ConfigError(
                f"BlockingConfig.steps must be multiples of eval_every={self.eval_every}, got {self.steps}"
            )
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"BlockingConfig.patience must be >= 1 or None, got {self.patience}")
        if self.eval_examples is not None and self.eval_examples < 1:
            raise ConfigError(f"BlockingConfig.eval_examples must be >= 1 or None, got {self.eval_examples}")
        self._check_search()

    def _check_search(self) -> None:
        if self.search not in SEARCHES:
            raise ConfigError(f"BlockingConfig.search must be one of {SEARCHES}, got {self.search!r}")
        for name in ("tpe_trials", "tpe_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"BlockingConfig.{name} must be an int >= 1, got {value!r}")
        if self.search == "tpe" and min(self.lrs) == max(self.lrs):
            raise ConfigError(
                f"BlockingConfig.search tpe draws the lr between min(lrs) and max(lrs): give two different lrs, "
                f"got {self.lrs}"
            )

    @property
    def num_evals(self) -> int:
        """Checkpoints evaluated in the longest run."""
        return max(self.steps) // self.eval_every


@dataclass(frozen=True)
class BlockingDataConfig:
    """The attacker's data; null = the MLAC run's (``--run``), else synthetic bios.

    Args:
        data: synthetic (the offline Bias-in-Bios stand-in) or bias_in_bios.
        num_examples: synthetic data size (null = the run's or 8000).
        data_seed: the data seed (null = the run's or 0).
        max_length: tokens per bio (null = the run's or 48).
    """

    data: str | None = field(default=None, metadata=flag(metavar="{synthetic,bias_in_bios}"))
    num_examples: int | None = None
    data_seed: int | None = None
    max_length: int | None = None

    def __post_init__(self) -> None:
        check_values(self)
        if self.data not in (None, "synthetic", "bias_in_bios"):
            raise ConfigError(f"--data must be synthetic or bias_in_bios, got {self.data!r}")


@dataclass(frozen=True)
class BlockingOutput:
    """Where and how ``jaxtar redteam-classifier`` runs.

    Args:
        output: a new folder for results.json, results.md and blocking.png.
        random_init: add a randomly initialised encoder (a baseline).
        fast_compile: XLA -O0 style options: faster compiles, slower steps.
    """

    output: str | None = field(default=None, metadata=flag(name="--output", required=True))
    random_init: bool = field(default=False, metadata=flag(const=True))
    fast_compile: bool = field(default=False, metadata=flag(const=True))


BLOCKING_SECTIONS = {"blocking": BlockingConfig, "data": BlockingDataConfig, "output": BlockingOutput}
