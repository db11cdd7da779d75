"""The command line a newcomer reads: each subcommand's help lists only its own flags, each flag has a help text and
shows the value the chosen preset gives it, ``--version``, and the one config mechanism behind every command's flags
(prefix-less flags, lists, repeated flags, presets, exit 2 on a bad value)."""

from __future__ import annotations

import argparse
import re

import pytest

from jaxtar.cli import build_parser, main


@pytest.fixture(autouse=True)
def _wide_help(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # argparse wraps at the terminal width (and breaks words at hyphens)


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "-h"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_flag_of_every_subcommand_has_a_help_text():
    missing = [
        (" ".join(path), action.option_strings or action.dest)
        for path, parser in _parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction)
        and (not action.help or re.match(r"(int|float|str|bool|tuple\[.*\])( \| None)?( \[|$)", action.help))
    ]
    assert missing == []  # no flag without a help text, and none whose help is only its type


def test_each_defence_lists_only_its_own_flags(capsys):
    tar = _help(capsys, "defend", "tar")
    mlac = _help(capsys, "defend", "mlac")
    mapping = _help(capsys, "defend", "random-mapping")
    assert "--tar.outer-steps" in tar and "--mlac." not in tar and "--random-mapping." not in tar
    assert (
        "--mlac.outer-steps" in mlac and "--run.mesh-data" in mlac and "--tar." not in mlac and "--model." not in mlac
    )
    assert "--random-mapping.steps" in mapping and "--tar." not in mapping and "--baseline." not in mapping
    # was 321 lines with every MLAC flag; now each method's own flags, one help line (or two) each
    assert len(tar.splitlines()) < 200 and len(mlac.splitlines()) < 240
    assert "--tar.outer_steps" not in tar  # the underscore spelling works but is not listed twice
    top = _help(capsys, "defend")
    assert "TAR, the random-mapping safeguard or MLAC" in top and "mlac" in top


def test_help_shows_the_chosen_presets_values(capsys):
    toy = " ".join(_help(capsys, "defend", "tar").split())  # unwrap argparse's line breaks
    assert "outer (defence) steps N. [toy: 60]" in toy  # the toy preset's 60, not the dataclass default 750
    smollm2 = " ".join(_help(capsys, "defend", "tar", "--preset", "smollm2").split())
    assert "outer (defence) steps N. [smollm2: 10]" in smollm2
    mlac = " ".join(_help(capsys, "defend", "mlac", "--preset", "mlac-paper").split())
    assert "[mlac-paper: 16]" in mlac  # mlac.inner_steps of the paper preset
    bio = " ".join(_help(capsys, "redteam", "--preset", "bio").split())
    assert "[bio: redteam-bio]" in bio and "[bio: bio]" in bio
    bench = " ".join(_help(capsys, "bench").split())
    assert "attack steps K. [default: 4]" in bench
    bad = _help(capsys, "defend", "tar", "--preset", "tyo")
    assert "did you mean 'toy'" in bad and "[default: 750]" in " ".join(bad.split())


def test_version(capsys):
    from jaxtar import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"jaxtar {__version__}"


def test_redteam_flags_fill_the_config_sections():
    from jaxtar.commands.redteam import _config

    args = build_parser().parse_args(["redteam", "toy", "--preset", "bio", "--seeds", "0", "3", "--local",
                                      "forget=a.txt", "--local", "ood=b.txt", "--steps", "7", "--out", "x",
                                      "--no-progress", "--overwrite"])  # fmt: skip
    config = _config(args, red_team=True)
    assert (config.data.data, config.attack.suite) == ("bio", "redteam-bio")  # from the preset
    assert config.attack.seeds == (0, 3) and config.attack.steps == 7  # flags override it
    assert config.data.local_paths() == {"forget": "a.txt", "ood": "b.txt"}
    assert (config.output.out, config.output.progress, config.output.overwrite) == ("x", False, True)
    assert config.attack.max_retain_drop == 0.1 and config.preset == "bio"
    plain = _config(build_parser().parse_args(["redteam", "toy", "--out", "x"]), red_team=True)
    assert plain.attack.seeds is None and plain.output.progress and plain.data.data == "toy"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["redteam", "toy", "--out", "{tmp}/o", "--seeds", "-1"], "--seeds must be in [0, 4294967295]"),
        (["redteam", "toy", "--out", "{tmp}/o", "--lr-scale", "0"], "--lr-scale must be > 0"),
        (["redteam", "toy", "--out", "{tmp}/o", "--mcq-limit", "0"], "--mcq-limit must be >= 1"),
        (["redteam", "toy", "--out", "{tmp}/o", "--preset", "bi0"], "did you mean 'bio'"),
        (["redteam", "toy", "--out", "{tmp}/o", "--max-retain-drop", "2"], "--max-retain-drop must be in [0, 1]"),
        (["eval", "toy", "--data", "chem"], "--data must be one of ('toy', 'bio', 'cyber')"),
        (["eval", "toy", "--local", "forget=x.txt"], "--local applies to --data bio/cyber"),
        (["bench", "--estimators", "tar", "magic"], "--estimators must be among"),
        (["bench", "--preset", "{tmp}/missing.yaml"], "does not exist"),
        (["generate", "toy", "hi", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["convert", "toy", "{tmp}/o", "--dtype", "float16"], "--dtype must be one of"),
    ],
)
def test_bad_values_exit_2_with_the_flag_named(tmp_path, capsys, argv, message):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_redteam_preset_file_is_read(tmp_path):
    from jaxtar.config.redteam import load_eval_config, load_redteam_config

    preset = tmp_path / "mine.yaml"
    preset.write_text("data: {data: toy, mcq_limit: 8}\nattack: {suite: qi2024, seeds: [1, 2]}\n")
    config = load_redteam_config(preset, {"attack.lr_scale": "0.5"})
    assert (config.data.mcq_limit, config.attack.suite, config.attack.seeds, config.attack.lr_scale) == (
        8, "qi2024", (1, 2), 0.5)  # fmt: skip
    assert load_eval_config(preset).data.mcq_limit == 8  # eval reads the data section only
    preset.write_text("attack: {suite: toy, seeds: 3x}\n")
    with pytest.raises(ValueError, match="attack.seeds must be an integer"):
        load_redteam_config(preset)


def test_eval_accepts_the_named_toy_model(capsys):
    from jaxtar.toy import toy_base_model_path
    from jaxtar.toy.named_models import resolve_model

    assert resolve_model("toy") == toy_base_model_path(0) and resolve_model("./toy") == "./toy"
    assert main(["eval", "toy", "--mcq-limit", "4"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| toy |")]
    assert len(row) == 1 and float(row[0].split("|")[5]) < 1.0  # its retain loss: the base model knows the world


NO_TORCH = """
import importlib.util, sys
_find = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a, **k: None if name.split(".")[0] == "torch" else _find(name, *a, **k)
from jaxtar.cli import main
sys.exit(main(["eval", "toy", "--mcq-limit", "2"]))
"""


def test_a_run_without_pytorch_is_quiet_and_packaging_raises_no_deprecation():
    import os
    import subprocess
    import sys
    import tomllib
    from pathlib import Path

    env = {**os.environ, "JAXTAR_HUGEPAGES": "0"}
    env.pop("TRANSFORMERS_NO_ADVISORY_WARNINGS", None)
    done = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| toy |" in done.stdout and "PyTorch was not found" not in done.stdout + done.stderr
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert isinstance(project["license"], str)  # a table is deprecated (setuptools warns on every install)
