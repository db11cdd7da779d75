"""Run configurations: one mechanism for every command — frozen dataclass sections, YAML presets, dotted overrides,
``--section.field`` flags and validation with clear :class:`~jaxtar.errors.ConfigError` messages (exit 2).

- `jaxtar.config.sections`: the mechanism (:func:`load_preset`, :func:`coerce`, presets, validation helpers).
- `jaxtar.config.flags`: sections as flags (``--section.field`` or prefix-less), help from each section's ``Args:``
  docstring, ``-h`` showing the chosen preset's values.
- `jaxtar.config.defence`: TAR and random mapping (:class:`DefenceConfig`, :func:`load_config`; presets in
  ``jaxtar/configs/``).
- `jaxtar.config.mlac`: MLAC (:class:`MLACRunConfig`, :func:`load_mlac_config`; presets in ``jaxtar/configs/mlac/``).
- `jaxtar.config.redteam`: ``jaxtar redteam`` / ``eval`` (:func:`load_redteam_config`; presets in
  ``jaxtar/configs/redteam/``).
- `jaxtar.config.blocking`: MLAC's blocking evaluation (``jaxtar redteam-classifier``).
- `jaxtar.config.tools`: ``jaxtar bench`` (presets in ``jaxtar/configs/bench/``), ``demo``, ``generate``, ``convert``.
- `jaxtar.config.choices`: names the JAX side defines (estimators), so that reading a config never imports JAX.

Why not tyro: tyro (the dataclass-to-CLI library) was weighed against this package and not adopted. It would own the
parser, while ``jaxtar defend`` is an argparse subcommand whose preset must be read before the flags have defaults;
it parses ``tuple[float, ...]`` as ``--tar.adversary-lrs 1e-3 3e-3`` and refuses the YAML form ``"[1e-3, 3e-3]"``,
``null`` and ``.inf`` (so "TarConfig.lr must be a finite number, got inf" became "could not convert string to float");
its errors are boxed panels with its own wording ("Perhaps you meant"), not our one-line messages. Library callers
(``load_config(preset, {"tar.lr": "1e-3"})``) would still need our YAML reading, type coercion and dotted overrides,
so it would add a dependency without removing the plumbing; it does share our hyphen/underscore flags, no prefix
matching and exit code 2.

Example:
    >>> load_config("toy", {"tar.outer_steps": "5"}).tar.outer_steps
    5
    >>> load_mlac_config("mlac-offline", {"mlac.outer_steps": 3}).mlac.outer_steps
    3
"""

from jaxtar.config.choices import CALIBRATION_METHODS, ESTIMATOR_KINDS
from jaxtar.config.defence import (
    DEFENCE_PRESETS,
    DTYPES,
    EXTERNAL_SECTIONS,
    PRESET_DIR,
    SECTIONS,
    TAMPER_LOSSES,
    TAR_SETTINGS,
    DataConfig,
    DefenceConfig,
    ModelConfig,
    RandomMappingConfig,
    RunConfig,
    TarConfig,
    add_config_flags,
    config_overrides,
    list_presets,
    load_config,
    save_config,
    shorthand_overrides,
)
from jaxtar.config.mlac import (
    MLAC_PRESETS,
    MLAC_SECTIONS,
    MLACConfig,
    MLACRunConfig,
    MLACRunSettings,
    add_mlac_flags,
    list_mlac_presets,
    load_mlac_config,
    mlac_overrides,
)
from jaxtar.config.redteam import (
    REDTEAM_PRESETS,
    AttackConfig,
    EvalConfig,
    EvalDataConfig,
    RedTeamConfig,
    load_eval_config,
    load_redteam_config,
)
from jaxtar.config.sections import (
    MAX_INT,
    MAX_SEED,
    PresetFolder,
    add_section_flags,
    build_section,
    check_values,
    coerce,
    load_preset,
    load_yaml,
    merge_overrides,
    parse_flag,
    parse_value,
    section_overrides,
    suggest,
)
from jaxtar.errors import ConfigError

__all__ = [
    "CALIBRATION_METHODS",
    "DEFENCE_PRESETS",
    "DTYPES",
    "ESTIMATOR_KINDS",
    "EXTERNAL_SECTIONS",
    "MAX_INT",
    "MAX_SEED",
    "MLAC_PRESETS",
    "MLAC_SECTIONS",
    "REDTEAM_PRESETS",
    "PRESET_DIR",
    "SECTIONS",
    "TAMPER_LOSSES",
    "TAR_SETTINGS",
    "AttackConfig",
    "ConfigError",
    "DataConfig",
    "DefenceConfig",
    "EvalConfig",
    "EvalDataConfig",
    "MLACConfig",
    "MLACRunConfig",
    "MLACRunSettings",
    "ModelConfig",
    "PresetFolder",
    "RandomMappingConfig",
    "RedTeamConfig",
    "RunConfig",
    "TarConfig",
    "add_config_flags",
    "add_mlac_flags",
    "add_section_flags",
    "build_section",
    "check_values",
    "coerce",
    "config_overrides",
    "list_mlac_presets",
    "list_presets",
    "load_config",
    "load_eval_config",
    "load_mlac_config",
    "load_preset",
    "load_redteam_config",
    "load_yaml",
    "merge_overrides",
    "mlac_overrides",
    "parse_flag",
    "parse_value",
    "save_config",
    "shorthand_overrides",
    "section_overrides",
    "suggest",
]
