"""The baselines of TAR's tables as a config section (:class:`BaselineConfig`, ``jaxtar defend baseline``):
max-entropy and min-posterior training, LLMU and RMU (docs/methods.md#baselines).

Example:
    >>> BaselineConfig(method="rmu").rmu_layer
    7
"""

from __future__ import annotations

from dataclasses import dataclass

from jaxtar.config.sections import check_schedule_free, check_values, non_negative, one_of, positive
from jaxtar.errors import ConfigError

BASELINE_METHODS = ("max_entropy", "min_posterior", "llmu", "rmu")
LLMU_NORMAL_LOSSES = ("kl", "ce")


@dataclass(frozen=True)
class BaselineConfig:
    """The baselines of TAR's tables (docs/methods.md#baselines), trained like random mapping: schedule-free AdamW
    on a forget term + a retain term. Shared defaults (steps, lr, warmup, batch 8) are the official TAR
    repository's ``modules/baselines.py``; each method's coefficients are its paper's.

    Args:
        method: ``max_entropy`` (maximise next-token entropy on forget text), ``min_posterior`` (minimise
            ``-log(1 - p(token))`` on forget text), ``llmu`` (Yao et al. 2023) or ``rmu`` (Li et al. 2024, WMDP).
        steps: optimiser steps.
        lr, warmup_steps, b1, b2, eps, weight_decay: the schedule-free AdamW optimiser.
        forget_batch_size, retain_batch_size: sequences per batch (LLMU draws a second retain batch as the random
            completions).
        lambda_forget, lambda_retain: max_entropy / min_posterior: weights of the forget loss and of the retain CE.
        min_posterior_threshold: min_posterior: tokens with ``log p(token) <`` this get no loss (official: -15).
        llmu_ascent_weight: llmu: weight of gradient ascent on forget text (LLMU's ``bad_weight``, 0.5).
        llmu_random_weight: llmu: weight of the random-completion CE (``random_weight``, 1).
        llmu_normal_weight: llmu: weight of the normal-data term (``normal_weight``, 1).
        llmu_normal_loss: llmu's normal-data term: ``kl`` to the original model (the paper) or ``ce`` on retain text
            (what the official TAR repository's LLMU baseline uses instead).
        rmu_layer: rmu: the decoder layer (0-based, WMDP's ``--layer_id``) whose output is steered: hidden state
            ``rmu_layer + 1`` of the HF convention (the last layer's is after the final norm).
        rmu_update_layers: rmu: the layers whose weights train; None = ``rmu_layer`` and the two below it (WMDP).
        rmu_params: rmu: the per-layer weights that train (WMDP: ``param_ids 6`` = the MLP's down projection).
        rmu_steering_coefficient: rmu: the norm ``c`` of the random control vector (WMDP, zephyr-7b: 6.5).
        rmu_alpha: rmu: weight of the retain activation MSE (WMDP, zephyr-7b: 1200).
        rmu_seed: rmu: seed of the random control vector.
        unmasked_losses: parity with the reference code (padding positions count in every mean).
    """

    method: str = "max_entropy"
    steps: int = 1000
    lr: float = 1e-5
    warmup_steps: int = 100
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    forget_batch_size: int = 8
    retain_batch_size: int = 8
    lambda_forget: float = 1.0
    lambda_retain: float = 1.0
    min_posterior_threshold: float = -15.0
    llmu_ascent_weight: float = 0.5
    llmu_random_weight: float = 1.0
    llmu_normal_weight: float = 1.0
    llmu_normal_loss: str = "kl"
    rmu_layer: int = 7
    rmu_update_layers: tuple[int, ...] | None = None
    rmu_params: tuple[str, ...] = ("down_proj",)
    rmu_steering_coefficient: float = 6.5
    rmu_alpha: float = 1200.0
    rmu_seed: int = 0
    unmasked_losses: bool = False

    def __post_init__(self) -> None:
        check_values(self)
        one_of(self, "method", BASELINE_METHODS)
        one_of(self, "llmu_normal_loss", LLMU_NORMAL_LOSSES)
        positive(self, "steps", "forget_batch_size", "retain_batch_size", "rmu_steering_coefficient")
        non_negative(self, "lambda_forget", "lambda_retain", "llmu_ascent_weight", "llmu_random_weight")
        non_negative(self, "llmu_normal_weight", "rmu_alpha", "rmu_layer")
        check_schedule_free(self)
        if self.rmu_update_layers is not None and not (
            self.rmu_update_layers and all(i >= 0 for i in self.rmu_update_layers)
        ):
            raise ConfigError(
                f"BaselineConfig.rmu_update_layers must be layer indices >= 0, got {self.rmu_update_layers}"
            )
        if not self.rmu_params:
            raise ConfigError("BaselineConfig.rmu_params must name at least one per-layer weight (e.g. down_proj)")
        if self.method == "rmu" and self.weight_decay > 0:
            raise ConfigError(
                "BaselineConfig.weight_decay must be 0 for rmu: decay would also move the weights RMU keeps frozen"
            )
