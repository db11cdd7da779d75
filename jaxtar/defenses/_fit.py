"""Will the run fit? Sequence length against the model's positions, and the memory planner against the machine.

Both checks run before the run folder is created, so a run that cannot work is refused with nothing written. The
memory check compares the planner's prediction (`jaxtar.meta.memory`: calibrated on XLA's CPU allocations, within
tens of percent on other shapes) with the memory the run's devices have; ``run.force`` (``--force``) runs anyway.
"""

from __future__ import annotations

import types
from typing import Any

import jax
from jax.sharding import Mesh

from jaxtar.errors import InputError
from jaxtar.meta import Estimator
from jaxtar.meta.memory import STATE_FACTOR, Workload, predict_peak_bytes

OUTER_STATE_ARRAYS = 3  # schedule-free AdamW: z, the second moment, and the gradient in flight


def check_positions(model: Any, max_length: int) -> None:
    """Refuses rows longer than the model has positions for.

    Example:
        >>> from jaxtar.models import LlamaConfig, model_for_config
        >>> check_positions(model_for_config(LlamaConfig.tiny()), 10**5)
        Traceback (most recent call last):
        ...
        jaxtar.errors.InputError: data.max_length = 100000 exceeds the model's 128 positions ...
    """
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and max_length > limit:
        raise InputError(
            f"data.max_length = {max_length} exceeds the model's {limit} positions (max_position_embeddings); "
            f"use at most {limit}"
        )


def _llama_view(config: Any) -> Any:
    """The Llama-shaped fields `Workload.for_llama` reads, for Llama-family and GPT-2 configs (None otherwise)."""
    needed = ("vocab_size", "hidden_size", "num_layers", "num_heads")
    if not all(hasattr(config, n) for n in needed):
        return None
    d = config.hidden_size
    return types.SimpleNamespace(
        vocab_size=config.vocab_size,
        hidden_size=d,
        intermediate_size=getattr(config, "intermediate_size", None) or 4 * d,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        num_kv_heads=getattr(config, "num_kv_heads", config.num_heads),
        head_dim=getattr(config, "head_dim", None),
        tie_word_embeddings=getattr(config, "tie_word_embeddings", True),
    )


def training_bytes(model: Any, batch_size: int, seq_len: int, *, extra_param_copies: int = 0) -> int | None:
    """Predicted peak bytes of a plain training step (params, gradient, outer optimiser state, activations of
    ``batch_size`` rows), plus ``extra_param_copies`` further parameter-sized arrays (e.g. a frozen base)."""
    view = _llama_view(model.config)
    if view is None:
        return None
    w = Workload.for_llama(view, batch_size=batch_size, seq_len=seq_len, steps=1)
    params = 4 * w.defended_params
    return int(params * (2 + OUTER_STATE_ARRAYS + extra_param_copies) + 2 * w.step_activation_bytes)


def tar_bytes(model: Any, tar: Any, seq_len: int, optimizer: str = "adamw") -> int | None:
    """Predicted peak bytes of TAR's outer step: the meta-gradient of ``tar.estimator`` over A adversaries (in
    chunks) plus the retain loss against the frozen base and the outer optimiser."""
    view = _llama_view(model.config)
    if view is None:
        return None
    w = Workload.for_llama(
        view,
        batch_size=tar.adversary_batch_size,
        seq_len=seq_len,
        steps=tar.inner_steps,
        records=tar.inner_steps // tar.tamper_every,
        optimizer=optimizer if optimizer in STATE_FACTOR else "adamw",
        adversaries=tar.adversaries_per_step,
        tamper_batch_size=tar.tamper_batch_size * (2 if tar.tamper_loss == "dpo" else 1),
        loss_chunk=tar.loss_chunk_size,
        lora_rank=tar.adversary_lora_rank,
    )
    estimator = Estimator(tar.estimator, truncation=tar.truncation)
    meta = predict_peak_bytes(w, estimator, tar.adversary_chunk_size).total
    retain = training_bytes(model, 2 * tar.retain_batch_size, seq_len, extra_param_copies=1)
    return int(meta + retain)


def available_bytes(mesh: Mesh | None) -> int | None:
    """Memory the run's devices have: the sum of their allocator limits on accelerators; on CPU the host's available
    memory (simulated CPU devices share it). None when unknown."""
    devices = list(mesh.devices.flat) if mesh is not None else jax.devices()[:1]
    if devices[0].platform == "cpu":
        return _host_available()
    limits = [(d.memory_stats() or {}).get("bytes_limit") for d in devices]
    return None if None in limits else int(sum(limits))


def _host_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(predicted: dict[str, int | None], mesh: Mesh | None, force: bool, resident: int = 0) -> None:
    """Refuses a run whose predicted peak (``phase -> bytes``) exceeds the devices' memory, unless ``force``.
    ``resident``: bytes of the already loaded weights, which the prediction counts and which, on CPU, no longer
    show as available.

    Example:
        >>> check_memory({"tar": 10**15}, None, force=False)
        Traceback (most recent call last):
        ...
        jaxtar.errors.InputError: the memory planner predicts ...
        >>> check_memory({"tar": 10**15}, None, force=True)  # the user insists
    """
    known = {k: v for k, v in predicted.items() if v is not None}
    if force or not known:
        return
    available = available_bytes(mesh)
    if available is not None and (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform == "cpu":
        available += resident
    phase, need = max(known.items(), key=lambda kv: kv[1])
    if available is not None and need > available:
        raise InputError(
            f"the memory planner predicts {need / 2**30:.1f} GiB for the {phase} phase, but only "
            f"{available / 2**30:.1f} GiB is available; reduce the batch sizes, data.max_length or the adversaries "
            "per step (tar.adversary_chunk_size bounds them), or pass --force (run.force) to try anyway"
        )
