"""``jaxtar convert`` on the shipped toy model: an HF folder that loads back with identical weights and tokenizer;
an existing non-empty output folder is refused (exit 2, nothing overwritten)."""

from __future__ import annotations

import jax
import numpy as np

from jaxtar.cli import main
from jaxtar.data.toy import toy_base_model_path
from jaxtar.models import from_pretrained, load_tokenizer


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
