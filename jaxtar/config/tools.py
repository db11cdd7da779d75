"""Settings of the tool commands: ``jaxtar bench``, ``jaxtar demo``, ``jaxtar generate`` and ``jaxtar convert``.

Each is one section whose fields are the command's flags, spelled without a prefix (``--k 4``, ``--quick``); the
inputs a command works on (the model and prompt of ``generate``, the source and folder of ``convert``) stay positional
arguments. ``jaxtar bench --preset`` reads a YAML preset from ``jaxtar/configs/bench/`` (or a file).

Example:
    >>> from jaxtar.config.sections import load_preset
    >>> load_preset("cpu-small", {"bench": BenchConfig}, {"bench.k": "8"}, presets=BENCH_PRESETS)[1]["bench"].k
    8
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from jaxtar.config.baseline import BASELINE_METHODS
from jaxtar.config.choices import ESTIMATOR_KINDS
from jaxtar.config.flags import flag
from jaxtar.config.sections import PresetFolder, check_values
from jaxtar.errors import ConfigError

BENCH_PRESETS = PresetFolder(Path(__file__).resolve().parent.parent / "configs" / "bench", "bench preset")
BENCH_SIZES = ("tiny", "small")
DTYPE_NAMES = ("float32", "bfloat16")


@dataclass(frozen=True)
class BenchConfig:
    """A meta-gradient throughput benchmark on a seeded Llama.

    Args:
        estimators: estimators to time (truncated uses T = K/4).
        k: attack steps K.
        every: the tamper loss is recorded every this many steps (null = min(4, K)).
        size: tiny (2 layers, d=64: overhead-bound) or small (4 layers, d=256: compute-bound).
        layers: override the number of layers.
        hidden_size: override d (>= 8; MLP 3d; d // 64 heads).
        batch: sequences per attack step.
        seq: tokens per sequence.
        reps: timed runs per row after one warm-up (the median is reported).
        json: also write the rows to this new JSON file.
    """

    estimators: tuple[str, ...] = field(default=ESTIMATOR_KINDS, metadata=flag(nargs="+", metavar="ESTIMATOR"))
    k: int = 4
    every: int | None = None
    size: str = field(default="tiny", metadata=flag(metavar="{tiny,small}"))
    layers: int | None = None
    hidden_size: int | None = None
    batch: int = 4
    seq: int = 32
    reps: int = 5
    json: str | None = None

    def __post_init__(self) -> None:
        check_values(self)
        bad = [e for e in self.estimators if e not in ESTIMATOR_KINDS]
        if bad or not self.estimators:
            raise ConfigError(f"--estimators must be among {ESTIMATOR_KINDS}, got {list(self.estimators)}")
        if self.size not in BENCH_SIZES:
            raise ConfigError(f"--size must be one of {BENCH_SIZES}, got {self.size!r}")
        for name in ("k", "batch", "seq", "reps", "layers"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.seq < 2:
            raise ConfigError("--seq must be >= 2 (next-token loss)")
        if self.every is not None and not 1 <= self.every <= self.k:
            raise ConfigError(f"--every must be in [1, K={self.k}], got {self.every}")
        if self.hidden_size is not None:
            heads = max(1, self.hidden_size // 64)
            if self.hidden_size < 8 or self.hidden_size % heads or (self.hidden_size // heads) % 2:
                raise ConfigError(
                    f"--hidden-size must be >= 8 with an even head size (d/64 heads), got {self.hidden_size}"
                )


@dataclass(frozen=True)
class DemoConfig:
    """The offline demo.

    Args:
        output: a new (or empty) folder for everything the demo writes (null = a fresh runs/demo-<time>).
        quick: a few steps per stage: checks the plumbing in 1-2 CPU-minutes; the numbers mean nothing.
        seeds: seeds per red-team adversary (null = one; each extra seed adds about two minutes).
        baselines: also train these baselines of the TAR paper from the base model (toy preset's ``baseline``
            section) and red-team them beside TAR; ``all`` = the four. Each adds about 2 CPU-minutes.
        progress: progress bars.
    """

    output: str | None = field(default=None, metadata=flag(name="--output"))
    quick: bool = field(default=False, metadata=flag(const=True))
    seeds: tuple[int, ...] | None = field(default=None, metadata=flag(nargs="+"))
    baselines: tuple[str, ...] = field(
        default=(), metadata=flag(nargs="+", metavar="{" + ",".join((*BASELINE_METHODS, "all")) + "}")
    )
    progress: bool = field(
        default=True,
        metadata=flag(name="--no-progress", const=False, help="no progress bars (stages and table)"),
    )

    def __post_init__(self) -> None:
        check_values(self)
        unknown = [b for b in self.baselines if b not in (*BASELINE_METHODS, "all")]
        if unknown:
            raise ConfigError(f"DemoConfig.baselines: unknown {unknown}; choose from {[*BASELINE_METHODS, 'all']}")
        if "all" in self.baselines:
            object.__setattr__(self, "baselines", BASELINE_METHODS)
        elif len(set(self.baselines)) != len(self.baselines):
            raise ConfigError(f"DemoConfig.baselines names a method twice: {list(self.baselines)}")


@dataclass(frozen=True)
class GenerateConfig:
    """How a reply is generated.

    Args:
        max_new_tokens: tokens to generate at most.
        temperature: sampling temperature (0 = greedy).
        top_p: nucleus sampling: keep the smallest set of tokens with this much probability (null = all).
        seed: the sampling seed.
    """

    max_new_tokens: int = 40
    temperature: float = 0.0
    top_p: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_values(self)
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class ConvertConfig:
    """How a checkpoint is written.

    Args:
        dtype: the dtype of the written weights.
        allow_nonfinite: convert weights that hold NaN / inf (with a warning) instead of refusing them.
    """

    dtype: str = field(default="float32", metadata=flag(metavar="{float32,bfloat16}"))
    allow_nonfinite: bool = field(default=False, metadata=flag(const=True))

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_NAMES:
            raise ConfigError(f"--dtype must be one of {DTYPE_NAMES}, got {self.dtype!r}")
