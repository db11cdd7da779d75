"""Defences: the random-mapping initial safeguard, TAR and the baselines of TAR's tables (max entropy, min
posterior, LLMU, RMU), as resumable, checkpointed training runs.

Example:
    >>> from jaxtar.config import load_config
    >>> from jaxtar.defenses import run_tar
    >>> result = run_tar(load_config("toy", {"run.output_dir": "out/tar", "tar.outer_steps": 20}))  # doctest: +SKIP
    >>> result.model_dir  # an HF checkpoint  # doctest: +SKIP
    PosixPath('out/tar/model')
"""

from jaxtar.defenses._inputs import InputError, check_tokenizer, load_model
from jaxtar.defenses._loop import Phase, Selected, schedule_free_adamw, schedule_free_params
from jaxtar.defenses.baselines import (
    baseline_objective,
    build_baseline_phases,
    make_baseline_step,
    run_baseline,
)
from jaxtar.defenses.random_mapping import (
    build_random_mapping_phases,
    make_random_mapping_step,
    random_mapping_objective,
    run_random_mapping,
)
from jaxtar.defenses.runner import Defence, Loaded, RunResult, run_defence
from jaxtar.defenses.tar import build_tar_phases, make_sft_step, make_tar_step, run_tar, tar_losses
from jaxtar.defenses.tar_data import TarData, preference_reference, train_suite

METHODS = {"tar": run_tar, "random-mapping": run_random_mapping, "baseline": run_baseline}

__all__ = [
    "METHODS",
    "InputError",
    "Phase",
    "RunResult",
    "Selected",
    "Defence",
    "Loaded",
    "run_defence",
    "TarData",
    "baseline_objective",
    "build_baseline_phases",
    "build_random_mapping_phases",
    "build_tar_phases",
    "check_tokenizer",
    "load_model",
    "make_baseline_step",
    "make_random_mapping_step",
    "make_sft_step",
    "make_tar_step",
    "preference_reference",
    "random_mapping_objective",
    "run_baseline",
    "run_random_mapping",
    "run_tar",
    "schedule_free_adamw",
    "schedule_free_params",
    "tar_losses",
    "train_suite",
]
