"""``jaxtar convert`` on the shipped toy model: an HF folder that loads back with identical weights and tokenizer;
an existing non-empty output folder is refused (exit 2, nothing overwritten); so is an output below a file and a
mistyped local source (never looked up on the Hub)."""

from __future__ import annotations

import jax
import numpy as np

from jaxtar.cli import main
from jaxtar.models import from_pretrained, load_tokenizer
from jaxtar.toy import toy_base_model_path


def test_convert_round_trip_and_refusal(capsys, tmp_path):
    source = toy_base_model_path(train_if_missing=False)
    out = tmp_path / "converted"
    assert main(["convert", str(source), str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    _, want = from_pretrained(source)
    _, got = from_pretrained(out)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    text = "the pathogen is carried by the bat ."
    assert load_tokenizer(out)(text)["input_ids"] == load_tokenizer(source)(text)["input_ids"]

    before = (out / "model.safetensors").read_bytes()
    assert main(["convert", str(source), str(out), "--dtype", "bfloat16"]) == 2
    assert "error" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before


def _tiny_source(folder):
    from jaxtar.models import LlamaConfig, create_model, save_pretrained

    model, params = create_model(LlamaConfig.tiny(), seed=0)
    return save_pretrained(model, params, folder)


def test_convert_below_a_file_fails_cleanly_and_writes_nothing(capsys, tmp_path):
    source = _tiny_source(tmp_path / "src")
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "model"
    assert main(["convert", str(source), str(out)]) == 2
    assert f"error: cannot write {out}: {tmp_path / 'afile'} is not a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "src"]
    assert (tmp_path / "afile").read_text() == "x"


def test_convert_of_a_mistyped_local_path_does_not_go_online(capsys, tmp_path, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("looked a local path up on the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert main(["convert", "runs/tar", "out"]) == 2
    assert "runs/tar (the folder runs/ exists here; Hub ids are owner/name)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
