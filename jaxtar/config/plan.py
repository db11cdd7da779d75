"""Settings of ``jaxtar plan``, and the accelerators it knows.

``jaxtar plan`` sizes a TAR run before it is launched: per-device memory by component, the mesh to use, whether it
fits, and the step time. Its one section, `PlanConfig`, is given as plain flags (``--k 64 --devices 8xH100-80GB``);
settings left out come from the TAR preset the model names (``llama3-8b-bio``: its K, batch sizes, sequence length,
estimator), else from `jaxtar.config.defence.TarConfig`'s defaults. This module imports no JAX.

Example:
    >>> parse_devices("8xH100-80GB"), parse_devices("v5p-64")[0]
    ((8, 'H100-80GB'), 32)
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

from jaxtar.config.choices import ESTIMATOR_KINDS
from jaxtar.config.flags import flag
from jaxtar.config.sections import check_values
from jaxtar.errors import ConfigError


@dataclass(frozen=True)
class DeviceKind:
    """One accelerator: dense bf16 peak FLOP/s and memory (bytes) per device, and where the numbers come from."""

    peak_flops: float
    memory_bytes: int
    source: str


# Vendor specifications, dense (no sparsity) bf16 tensor throughput per device (a TPU chip: JAX sees one device per
# chip, two TensorCores on v4 / v5p). GPU memory as the datasheet's GB (10^9 bytes: a little under what nvidia-smi
# shows); TPU memory as Google's GiB.
DEVICES: dict[str, DeviceKind] = {
    # NVIDIA H100 Tensor Core GPU datasheet (SXM5): 1,979 TFLOPS bf16 with sparsity = 989 dense; 80 GB HBM3
    "H100-80GB": DeviceKind(989e12, 80 * 10**9, "NVIDIA H100 SXM datasheet"),
    # NVIDIA H200 Tensor Core GPU datasheet (SXM): 1,979 TFLOPS bf16 with sparsity = 989 dense; 141 GB HBM3e
    "H200": DeviceKind(989e12, 141 * 10**9, "NVIDIA H200 SXM datasheet"),
    # NVIDIA A100 Tensor Core GPU datasheet: 312 TFLOPS bf16 dense (624 with sparsity); 80 GB HBM2e / 40 GB HBM2
    "A100-80GB": DeviceKind(312e12, 80 * 10**9, "NVIDIA A100 datasheet"),
    "A100-40GB": DeviceKind(312e12, 40 * 10**9, "NVIDIA A100 datasheet"),
    # Cloud TPU docs, "TPU v5p": 459 TFLOPS bf16 per chip, 95 GiB HBM2e per chip
    "v5p": DeviceKind(459e12, 95 * 2**30, "Cloud TPU v5p documentation"),
    # Cloud TPU docs, "TPU v5e": 197 TFLOPS bf16 per chip, 16 GiB HBM2 per chip
    "v5e": DeviceKind(197e12, 16 * 2**30, "Cloud TPU v5e documentation"),
    # Cloud TPU docs, "TPU v4": 275 TFLOPS bf16 per chip, 32 GiB HBM2 per chip
    "v4": DeviceKind(275e12, 32 * 2**30, "Cloud TPU v4 documentation"),
    # A nominal host: ~50 GFLOP/s (float32 FMA) per core, this machine's memory; measure with `jaxtar bench`
    "cpu": DeviceKind(0.0, 0, "nominal: 50 GFLOP/s per core, this host's memory"),
}
_ALIASES = {"h100": "H100-80GB", "h100-80gb": "H100-80GB", "h200": "H200", "h200-141gb": "H200", "a100": "A100-80GB",
            "a100-80gb": "A100-80GB", "a100-40gb": "A100-40GB", "v5p": "v5p", "v5e": "v5e", "v5litepod": "v5e",
            "v4": "v4", "cpu": "cpu"}  # fmt: skip
_CORES_PER_CHIP = {"v5p": 2, "v4": 2, "v5e": 1}  # a slice v5p-64 names TensorCores: 32 chips


def device_kind(name: str) -> DeviceKind:
    """The `DEVICES` entry (``cpu``: this host's cores and memory)."""
    if name != "cpu":
        return DEVICES[name]
    memory = 16 * 2**30
    try:
        with open("/proc/meminfo") as f:
            memory = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    except (OSError, StopIteration):
        pass
    return DeviceKind(50e9 * (os.cpu_count() or 1), memory, DEVICES["cpu"].source)


def parse_devices(text: str) -> tuple[int, str]:
    """``(count, kind)`` of ``N x KIND`` (``8xH100-80GB``), ``KIND`` (one device) or a TPU slice ``v5p-64`` /
    ``v4-32`` (TensorCores: two per chip) / ``v5e-16`` (chips).

    Raises:
        ConfigError: an unknown kind or a bad count.

    Example:
        >>> parse_devices("cpu"), parse_devices("4xa100-40gb"), parse_devices("v5e-8")
        ((1, 'cpu'), (4, 'A100-40GB'), (8, 'v5e'))
    """
    spec = text.strip()
    count, name = 1, spec
    if m := re.fullmatch(r"(\d+)\s*[xX*]\s*(.+)", spec):
        count, name = int(m.group(1)), m.group(2)
    kind = _ALIASES.get(name.lower())
    if kind is None and (m := re.fullmatch(r"(v5p|v5e|v5litepod|v4)-(\d+)", name.lower())):
        kind = _ALIASES[m.group(1)]
        cores, per_chip = int(m.group(2)), _CORES_PER_CHIP[kind]
        if cores % per_chip:
            raise ConfigError(f"--devices {text}: a {kind} slice has {per_chip} TensorCores per chip")
        count *= cores // per_chip
    if kind is None:
        raise ConfigError(
            f"--devices {text!r}: unknown device; use N x one of {', '.join(DEVICES)} (8xH100-80GB), or a TPU slice "
            "(v5p-64, v4-32, v5e-16)"
        )
    if count < 1:
        raise ConfigError(f"--devices {text}: the device count must be >= 1")
    return count, kind


def parse_mesh(text: str) -> tuple[int, int, int]:
    """``DATAxFSDPxADVERSARY`` (``2x4x1``) as three sizes.

    Example:
        >>> parse_mesh("2x4x1")
        (2, 4, 1)
    """
    m = re.fullmatch(r"(\d+)[xX](\d+)[xX](\d+)", text.strip())
    if m is None or min(int(g) for g in m.groups()) < 1:
        raise ConfigError(f"--mesh must be DATAxFSDPxADVERSARY with sizes >= 1 (2x4x1), got {text!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


@dataclass(frozen=True)
class PlanConfig:
    """What to plan: a model, the TAR settings that size its memory, and the machine.

    Args:
        model: a TAR preset (toy, smollm2, llama3-8b-bio, ... or a YAML file: its model and TAR settings), a named
            shape (SmolLM2-135M, Llama-3.2-1B, Llama-3-8B), toy / smollm2, or a Hugging Face folder with config.json
            (default: toy).
        estimator: the meta-gradient estimator to break down (null = the preset's; without a preset, the one plan
            recommends).
        truncation: T of the truncated estimator (null = K/4).
        k: attack steps K per adversary (null = the preset's tar.inner_steps).
        every: a tamper record every this many steps (null = the preset's tar.tamper_every).
        batch: rows per attack step (null = the preset's tar.adversary_batch_size).
        tamper_batch: rows of the tamper loss (null = the preset's tar.tamper_batch_size).
        retain_batch: rows of the retain loss (null = the preset's tar.retain_batch_size).
        seq: tokens per row (null = the preset's data.max_length, else 256).
        adversaries: adversaries per outer step (null = the preset's tar.adversaries_per_step).
        chunk: adversaries run at once (null = the preset's tar.adversary_chunk_size; none = all).
        loss_chunk: tokens per chunk of the LM losses (null = the preset's tar.loss_chunk_size).
        optimizer: the attack's optimiser (sets its state arrays per parameter).
        devices: N x a device kind (8xH100-80GB, 4xA100-40GB, 1xH200), a TPU slice (v5p-64, v4-32, v5e-16) or cpu.
        mesh: DATAxFSDPxADVERSARY to use (null = the recommended mesh: the most data parallelism that fits, then
            fsdp).
        utilisation: the share of the devices' peak FLOP/s the step-time estimate assumes.
        headroom: the share of each device's memory a plan may use.
    """

    model: str = field(default="toy", metadata=flag(positional=True, nargs="?", metavar="MODEL"))
    estimator: str | None = field(default=None, metadata=flag(metavar="{" + ",".join(ESTIMATOR_KINDS) + "}"))
    truncation: int | None = None
    k: int | None = None
    every: int | None = None
    batch: int | None = None
    tamper_batch: int | None = None
    retain_batch: int | None = None
    seq: int | None = None
    adversaries: int | None = None
    chunk: int | None = None
    loss_chunk: int | None = None
    optimizer: str = "adamw"
    devices: str = "1xH100-80GB"
    mesh: str | None = None
    utilisation: float = 0.4
    headroom: float = 0.85

    def __post_init__(self) -> None:
        check_values(self)
        if self.estimator is not None and self.estimator not in ESTIMATOR_KINDS:
            raise ConfigError(f"--estimator must be one of {ESTIMATOR_KINDS}, got {self.estimator!r}")
        for name in ("k", "every", "batch", "tamper_batch", "retain_batch", "seq", "adversaries", "chunk",
                     "loss_chunk"):  # fmt: skip
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.truncation is not None and self.truncation < 0:
            raise ConfigError(f"--truncation must be >= 0, got {self.truncation}")
        for name in ("utilisation", "headroom"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"--{name} must be in (0, 1], got {getattr(self, name)}")
        count, _ = parse_devices(self.devices)
        if self.mesh is not None and math.prod(parse_mesh(self.mesh)) != count:
            raise ConfigError(f"--mesh {self.mesh} has {math.prod(parse_mesh(self.mesh))} devices; --devices "
                              f"{self.devices} has {count}")  # fmt: skip
