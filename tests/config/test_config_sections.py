"""The config mechanism on its own: presets from any folder, external sections, flags in both spellings with YAML
values, no prefix matching, messages that name what is wrong, and a config that never imports JAX."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from jaxtar.cli import main
from jaxtar.config import ConfigError, PresetFolder, add_section_flags, load_preset, section_overrides
from jaxtar.config.choices import ATTENTION_IMPLS, CALIBRATION_METHODS, ESTIMATOR_KINDS
from jaxtar.config.sections import check_sections, plain, sections_of


@dataclass(frozen=True)
class Train:
    steps: int = 1
    lrs: tuple[float, ...] | None = None
    name: str | None = None


@dataclass(frozen=True)
class Eval:
    every: int = 10


@dataclass(frozen=True)
class Whole:
    train: Train = field(default_factory=Train)
    eval: Eval = field(default_factory=Eval)
    preset: str = ""

    def __post_init__(self) -> None:
        check_sections(self)


SECTIONS = sections_of(Whole)


def test_load_preset_reads_any_folder_skips_external_sections_and_applies_overrides(tmp_path):
    (tmp_path / "small.yaml").write_text("train:\n  steps: 2\n  lrs: [1e-3, 3e-3]\nother: {anything: 1}\n")
    folder = PresetFolder(tmp_path, kind="test preset")
    assert folder.names() == ["small"]
    label, built = load_preset("small", SECTIONS, {"eval.every": "5"}, ("other",), presets=folder)
    assert label == "small" and Whole(**built, preset=label) == Whole(Train(2, (1e-3, 3e-3)), Eval(5), "small")
    label, built = load_preset(None, SECTIONS, {"train.name": "null"}, presets=folder)
    assert label == "" and built == {"train": Train(), "eval": Eval()}
    assert plain(Whole(Train(lrs=(1.0,)))) == {"train": {"steps": 1, "lrs": [1.0], "name": None},
                                               "eval": {"every": 10}, "preset": ""}  # fmt: skip
    with pytest.raises(ConfigError, match=r"unknown test preset 'smal'; known presets: \['small'\]; did you mean"):
        load_preset("smal", SECTIONS, presets=folder)
    with pytest.raises(ConfigError, match=r"unknown section 'other' in .*small.yaml'; known: \['eval', 'train'\]"):
        load_preset("small", SECTIONS, presets=folder)  # not external here
    with pytest.raises(ConfigError, match="Whole.train must be a Train"):
        Whole(train=Eval())


def test_preset_files_that_are_not_sections_are_refused(tmp_path):
    folder = PresetFolder(tmp_path)
    cases = {
        "[1, 2]": "must be a mapping of sections, got list",
        "train: [1]": "section 'train' in .* must be a mapping",
        "train: {steps: [unclosed": "is not valid YAML",
        "trian: {steps: 1}": "unknown section 'trian' in .*; did you mean 'train'",
        "1: {steps: 1}": "unknown section 1 in ",
        "train: {step: 1}": r"unknown field 'train.step'; did you mean 'train.steps'\?",
        "train: {steps: 1.5}": "train.steps must be an integer, got 1.5",
    }
    for text, message in cases.items():
        (tmp_path / "p.yaml").write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_preset(tmp_path / "p.yaml", SECTIONS, presets=folder)


def test_flags_take_both_spellings_and_yaml_values(tmp_path):
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_section_flags(parser, SECTIONS, tag="t", prefixes={"eval": "my-eval"})
    args = parser.parse_args(["--train.lrs", "[1e-3, 3e-3]", "--train.name", "x y", "--my-eval.every", "7"])
    overrides = section_overrides(args, "t")
    assert overrides == {"train.lrs": "[1e-3, 3e-3]", "train.name": "x y", "eval.every": "7"}
    _, built = load_preset(None, SECTIONS, overrides, presets=PresetFolder(tmp_path))
    assert built == {"train": Train(lrs=(1e-3, 3e-3), name="x y"), "eval": Eval(7)}


@pytest.mark.parametrize(
    "argv",
    [
        ["defend", "tar", "--tar.outer-step", "3"],  # a prefix of --tar.outer-steps
        ["defend", "tar", "--tar.outer_step", "3"],
        ["defend", "mlac", "--output", "x", "--mlac.outer-step", "3"],
        ["defend", "mlac", "--output", "x", "--mlac-run.warmup", "3"],
    ],
)
def test_flags_are_never_prefix_matched(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_names_mirror_the_jax_side_and_config_does_not_import_jax():
    from jaxtar.meta import ESTIMATORS
    from jaxtar.models.layers import ATTENTION_IMPLS as MODEL_ATTENTION_IMPLS
    from jaxtar.objectives.calibration import METHODS

    assert (tuple(ESTIMATORS), tuple(METHODS)) == (ESTIMATOR_KINDS, CALIBRATION_METHODS)
    assert MODEL_ATTENTION_IMPLS == ATTENTION_IMPLS
    code = "import sys, jaxtar.config; assert not [m for m in sys.modules if m.split('.')[0] == 'jax'], 'jax'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
