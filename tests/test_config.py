"""Run configs: presets, YAML and flag overrides (types, errors with suggestions), round trips, run identity."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from jaxtar.config import (
    ConfigError,
    DefenceConfig,
    TarConfig,
    add_config_flags,
    config_overrides,
    list_presets,
    load_config,
    parse_value,
    save_config,
)


def test_presets_load_and_the_paper_settings_are_the_shipped_hyperparameters():
    assert {"toy", "smollm2", "llama3-8b-bio", "llama3-8b-cyber", "llama3-8b-refusal"} <= set(list_presets())
    for name in list_presets():
        assert load_config(name).preset == name
    bio = load_config("llama3-8b-bio").tar  # docs/methods.md#tar-hyper-parameters
    assert (bio.outer_steps, bio.lr, bio.warmup_steps, bio.inner_steps, bio.tamper_every) == (750, 2e-5, 32, 64, 4)
    assert (bio.lambda_tr, bio.lambda_retain, bio.tamper_rate, bio.setting, bio.estimator) == (
        4.0, 1.0, 0.0625, "bio", "tar")  # fmt: skip
    assert (bio.adversary_batch_size, bio.tamper_batch_size, bio.retain_batch_size) == (32, 64, 64)
    refusal = load_config("llama3-8b-refusal").tar
    assert (refusal.outer_steps, refusal.lr, refusal.lambda_tr, refusal.tamper_loss, refusal.sft_steps) == (
        100, 6e-5, 0.1, "dpo", 100)  # fmt: skip
    assert load_config("llama3-8b-cyber").tar.setting == "cyber"


def test_overrides_are_typed_like_the_fields():
    cfg = load_config(
        "toy",
        {
            "tar.outer_steps": "5",  # flag text is parsed as YAML
            "tar.lr": "1e-3",  # (YAML 1.1 would read this as a string)
            "tar.adversary_lrs": "[1e-4, 2e-4]",
            "tar.max_grad_norm": "null",
            "run.progress": "false",
            "model.path": "123",  # a str field keeps its text
            "model.tokenizer": "null",
            "data.limit": 7,
        },
    )
    assert cfg.tar.outer_steps == 5 and cfg.tar.lr == 1e-3 and cfg.tar.adversary_lrs == (1e-4, 2e-4)
    assert cfg.tar.max_grad_norm is None and cfg.run.progress is False and cfg.model.path == "123"
    assert cfg.model.tokenizer is None and cfg.data.limit == 7
    assert parse_value("[1e-3, 2]") == [0.001, 2] and parse_value("2.5e-5") == 2.5e-5
    with pytest.raises(ConfigError, match=r"tar.outer_steps must be an integer, got 2.5"):
        load_config("toy", {"tar.outer_steps": 2.5})
    with pytest.raises(ConfigError, match=r"run.progress must be true or false, got 'yes please'"):
        load_config("toy", {"run.progress": "yes please"})
    with pytest.raises(ConfigError, match=r"tar.adversary_lrs must be a list"):
        load_config("toy", {"tar.adversary_lrs": "{a: 1}"})


def test_unknown_names_get_suggestions():
    with pytest.raises(ConfigError, match=r"unknown field 'tar.inner_step'; did you mean 'tar.inner_steps'\?"):
        load_config("toy", {"tar.inner_step": 3})
    with pytest.raises(ConfigError, match=r"unknown field 'outer_steps': use 'section.field'"):
        load_config("toy", {"outer_steps": 3})
    with pytest.raises(ConfigError, match=r"unknown preset 'tyo'; known presets: .*did you mean 'toy'\?"):
        load_config("tyo")
    with pytest.raises(ConfigError, match=r"preset file 'nope.yaml' does not exist"):
        load_config("nope.yaml")


def test_invalid_values_are_refused_by_the_dataclasses():
    cases = {
        "tar.b1": (0.0, "b1 must be > 0"),
        "tar.b2": (1.0, r"TarConfig.b2 must be in \[0, 1\)"),
        "tar.lambda_tr": (-1.0, "lambda_tr must be >= 0"),
        "tar.setting": ("chem", "setting must be one of"),
        "tar.tamper_loss": ("kl", "tamper_loss must be one of"),
        "tar.adversary_lrs": ([], "adversary_lrs must be positive numbers"),
        "tar.adversary_chunk_size": (0, "TarConfig.adversary_chunk_size must be > 0"),
        "random_mapping.steps": (0, "RandomMappingConfig.steps must be > 0"),
        "data.max_length": (0, "DataConfig.max_length must be > 0"),
    }
    for key, (value, message) in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_config("toy", {key: value})
    assert TarConfig(estimator="truncated", truncation=4).truncation == 4


def test_yaml_round_trip_external_sections_and_unknown_sections(tmp_path):
    cfg = load_config("toy", {"tar.adversary_lrs": [1e-4], "run.seed": 3})
    again = load_config(save_config(cfg, tmp_path / "c.yaml"), name="toy")
    assert again == cfg
    preset = tmp_path / "p.yaml"
    preset.write_text("redteam:\n  anything: 1\ntar:\n  outer_steps: 2\n")  # another command's section: ignored
    assert load_config(preset).tar.outer_steps == 2
    preset.write_text("tar:\n  - 1\n")
    with pytest.raises(ConfigError, match="section 'tar' in .* must be a mapping"):
        load_config(preset)
    preset.write_text("tar: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(preset)
    assert load_config(None) == DefenceConfig()


def test_every_field_is_a_flag():
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    args = parser.parse_args(["--tar.outer-steps", "9", "--random-mapping.lr", "0.5", "--data.max_length", "16"])
    overrides = config_overrides(args)
    assert overrides == {"tar.outer_steps": "9", "random_mapping.lr": "0.5", "data.max_length": "16"}
    cfg = load_config("toy", overrides)
    assert (cfg.tar.outer_steps, cfg.random_mapping.lr, cfg.data.max_length) == (9, 0.5, 16)
    n_fields = sum(len(dataclasses.fields(type(getattr(cfg, s)))) for s in ("model", "data", "run", "tar",
                                                                            "random_mapping", "baseline"))  # fmt: skip
    n_flags = len({a.dest for a in parser._actions if a.dest.startswith("cfg::")})
    assert n_flags == n_fields


def test_run_identity_ignores_run_settings_and_the_step_count():
    a = load_config("toy")
    b = load_config("toy", {"run.checkpoint_every": 1, "run.output_dir": "x", "tar.outer_steps": 999})
    assert a.identity("tar") == b.identity("tar")
    assert a.identity("tar") != load_config("toy", {"run.seed": 1}).identity("tar")
    assert a.identity("tar") != load_config("toy", {"tar.lambda_tr": 1.0}).identity("tar")
    assert a.identity("random_mapping") == load_config("toy", {"tar.lambda_tr": 1.0}).identity("random_mapping")


def test_a_key_given_twice_in_a_preset_file_is_refused_by_name(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("tar:\n  outer_steps: 2\n  lr: 1e-3\n  outer_steps: 3\n")
    with pytest.raises(ConfigError, match=r"twice.yaml'.*duplicate key 'outer_steps' in tar \(line 4\)"):
        load_config(str(path))
    path.write_text("tar:\n  outer_steps: 3\n  lr: 1e-3\n")
    assert load_config(str(path)).tar.outer_steps == 3
