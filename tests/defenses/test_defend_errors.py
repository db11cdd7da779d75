"""Bad input to ``jaxtar defend``: a clear message, exit code 2, and nothing written or overwritten."""

from __future__ import annotations

import json

import pytest

import jaxtar.commands.defend  # noqa: F401 - registers `jaxtar defend`
from jaxtar.checkpoint import open_run_dir
from jaxtar.cli import main
from jaxtar.models import LlamaConfig, create_model, save_pretrained
from jaxtar.toy import toy_world


def _tiny(path, vocab):
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                      max_position_embeddings=64, tie_word_embeddings=True)  # fmt: skip
    model, params = create_model(cfg, seed=0)
    return save_pretrained(model, params, path, tokenizer=toy_world(0).tokenizer)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"ok": _tiny(root / "ok", 320), "small_vocab": _tiny(root / "small", 64)}


def _run(capsys, *args):
    code = main(["defend", *args, "--run.progress", "false"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "toyy"], "unknown preset 'toyy'; known presets: ["),
        (["--tar.inner-steps", "0"], "TarConfig.inner_steps must be > 0, got 0"),
        (["--tar.lr", "fast"], "tar.lr must be a number, got 'fast'"),
        (["--tar.estimator", "magic"], "TarConfig.estimator must be one of"),
        (["--tar.inner-steps", "4", "--tar.tamper-every", "8"], "tamper_every (8) must be <= inner_steps (4)"),
        (["--tar.estimator", "truncated"], "truncation must be set exactly when estimator is 'truncated'"),
        (["--run.checkpoint-every", "-1"], "RunConfig.checkpoint_every must be > 0"),
        (["--data.heldout-fraction", "1.5"], "heldout_fraction must be in (0, 1)"),
        (["--model.dtype", "float16"], "ModelConfig.dtype must be one of"),
        (["--model.path", "/nonexistent/model"], "no such checkpoint folder or file: /nonexistent/model"),
        (["--data.forget", "/nonexistent/forget.txt"], "does not exist"),
        (["--data.forget", "wmdp-bio"], "is a 'mcq' source, not text"),
        (["--tar.tamper-loss", "dpo"], "the DPO tamper loss needs preference pairs: set data.preferences"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_writes_nothing(models, tmp_path, capsys, args, message):
    out = tmp_path / "run"
    code, err = _run(capsys, "tar", "--model.path", str(models["ok"]), *args, "--output", str(out))
    assert code == 2 and message in err, err
    assert not out.exists()


def test_unknown_field_in_a_preset_file_or_flag(models, tmp_path, capsys):
    preset = tmp_path / "mine.yaml"
    preset.write_text("tar:\n  outer_step: 3\n")
    code, err = _run(capsys, "tar", "--preset", str(preset), "--output", str(tmp_path / "run"))
    assert code == 2 and "unknown field 'tar.outer_step'; did you mean 'tar.outer_steps'?" in err
    preset.write_text("tarr:\n  outer_steps: 3\n")
    code, err = _run(capsys, "tar", "--preset", str(preset), "--output", str(tmp_path / "run"))
    assert code == 2 and "unknown section 'tarr'" in err
    with pytest.raises(SystemExit) as exit_info:  # argparse: unknown flags
        main(["defend", "tar", "--tar.outer-stepz", "3"])
    assert exit_info.value.code == 2
    assert not (tmp_path / "run").exists()


def test_tokenizer_that_does_not_match_the_model(models, tmp_path, capsys):
    code, err = _run(capsys, "random-mapping", "--model.path", str(models["small_vocab"]), "--output",
                     str(tmp_path / "run"))  # fmt: skip
    size = len(toy_world(0).tokenizer)
    assert code == 2 and f"the tokenizer ({size} tokens) does not match the model (vocab_size 64)" in err
    assert not (tmp_path / "run").exists()


def test_output_folder_holding_another_run_or_other_files(models, tmp_path, capsys):
    other = tmp_path / "other"
    open_run_dir(other, {"method": "tar", "seed": 123}).close()
    (other / "notes.txt").write_text("keep me")
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    code, err = _run(capsys, "random-mapping", "--model.path", str(models["ok"]), "--output", str(other))
    assert code == 2 and "holds another run (method: 'tar' != 'random_mapping'" in err
    code, err = _run(capsys, "random-mapping", "--model.path", str(models["ok"]), "--output", str(other), "--resume")
    assert code == 2 and "holds another run" in err
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before
    assert json.loads((other / "run.json").read_text()) == {"method": "tar", "seed": 123}

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.bin").write_bytes(b"\x00")
    code, err = _run(capsys, "tar", "--model.path", str(models["ok"]), "--output", str(foreign))
    assert code == 2 and "is not empty and holds no jaxtar run" in err
    assert [p.name for p in foreign.iterdir()] == ["data.bin"]

    code, err = _run(capsys, "tar", "--model.path", str(models["ok"]), "--run.output-dir", "null")
    assert code == 2 and "run.output_dir is required" in err
