"""MLAC run configs: the YAML presets, overrides, flags, round trips and refusals (ConfigErrors, never crashes)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from jaxtar.config import (
    ConfigError,
    MLACConfig,
    MLACRunConfig,
    MLACRunSettings,
    add_mlac_flags,
    list_mlac_presets,
    load_mlac_config,
    mlac_overrides,
    save_config,
)


def test_shipped_presets_hold_their_settings():
    assert list_mlac_presets() == ["mlac-minilm", "mlac-official", "mlac-offline", "mlac-paper",
                                   "mlac-paper-gradpenalty"]  # fmt: skip
    for name in list_mlac_presets():
        assert load_mlac_config(name).preset == name
    offline = load_mlac_config("mlac-offline")
    s = offline.mlac_run
    assert (s.model, s.hidden_size, s.warmup_steps, s.warmup_lr) == ("small-bert", 32, 600, 3e-3)
    m = offline.mlac
    assert (m.inner_steps, m.inner_batch_sizes, m.inner_lr, m.outer_lr, m.outer_steps, m.calibration_steps) == (
        4, (12, 24, 48), 3e-3, 1e-3, 200, 50)  # fmt: skip
    minilm = load_mlac_config("mlac-minilm")
    assert (minilm.mlac_run.model, minilm.mlac_run.max_length, minilm.mlac.estimator, minilm.mlac.outer_lr) == (
        "minilm", 64, "mixed", 2e-5)  # fmt: skip
    assert load_mlac_config("mlac-paper").mlac.outer_steps == 50_000
    assert load_mlac_config(None) == MLACRunConfig()


def test_round_trip_and_flags(tmp_path):
    cfg = load_mlac_config("mlac-offline", {"mlac.inner_batch_sizes": "[8, 16]", "mlac_run.max_examples": 100})
    again = load_mlac_config(save_config(cfg, tmp_path / "mlac-offline.yaml"))
    assert again == cfg and cfg.to_dict()["mlac"]["inner_batch_sizes"] == [8, 16]
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_mlac_flags(parser)
    args = parser.parse_args(["--mlac.inner_lr", "1e-3", "--mlac-run.max-examples", "null"])
    assert mlac_overrides(args) == {"mlac.inner_lr": "1e-3", "mlac_run.max_examples": "null"}
    n_fields = len(dataclasses.fields(MLACConfig)) + len(dataclasses.fields(MLACRunSettings))
    assert len({a.dest for a in parser._actions if a.dest.startswith("mlac::")}) == n_fields


def test_bad_presets_and_values_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown MLAC preset 'mlac-ofline'; known presets: .*did you mean"):
        load_mlac_config("mlac-ofline")
    preset = tmp_path / "mine.yaml"
    for text, message in {
        "mlac: [unclosed": "is not valid YAML",
        "tar: {outer_steps: 1}": "unknown section 'tar' in .*; known: \\['mlac', 'mlac_run', 'run'\\]",
        "mlac: {outer_step: 1}": "unknown field 'mlac.outer_step'; did you mean 'mlac.outer_steps'",
        "mlac_run: {data: imdb}": r"mlac_run.data must be one of \('synthetic', 'bias_in_bios'\), got 'imdb'",
        "mlac_run: {hidden_size: 33}": "mlac_run.hidden_size 33 is not divisible by mlac_run.num_heads 2",
        "mlac: {inner_lr: .inf}": "MLACConfig.inner_lr must be a finite number, got inf",
    }.items():
        preset.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_mlac_config(preset)
    with pytest.raises(ConfigError, match="MLACConfig.variant must be one of"):
        MLACConfig(variant="censor")
    with pytest.raises(ConfigError, match="MLACRunConfig.mlac must be a MLACConfig"):
        MLACRunConfig(mlac=MLACRunSettings())
