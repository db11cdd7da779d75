"""``tar.loss_chunk_size``: TAR's attack, tamper and retain losses computed from the hidden states a chunk of tokens
at a time give the values and gradients of the full-logits losses, and the memory planner counts the smaller peak."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from jaxtar.config import load_config
from jaxtar.defenses import load_model, tar_losses
from jaxtar.defenses._fit import tar_bytes


@pytest.fixture(scope="module")
def toy(tar_overrides):
    config = load_config("toy", tar_overrides)
    model, params, tokenizer = load_model(config.model)
    ids = tokenizer(["the pathogen spreads by air", "paris is the capital city of"], padding="max_length",
                    max_length=12, return_tensors="np")  # fmt: skip
    batch = {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]}
    assert batch["attention_mask"].sum() < batch["attention_mask"].size  # padding included
    return config, model, params, batch


@pytest.mark.parametrize("chunk", [5, 64])  # 5 divides no row count; 64 is more than all 24 tokens
def test_chunked_tar_losses_equal_the_full_logits_losses(toy, chunk):
    config, model, params, batch = toy
    full = tar_losses(model, config.tar)
    chunked = tar_losses(model, dataclasses.replace(config.tar, loss_chunk_size=chunk))
    for name in ("attack", "tamper"):
        value, grads = jax.value_and_grad(full[name])(params, batch, None)
        value_c, grads_c = jax.value_and_grad(chunked[name])(params, batch, None)
        np.testing.assert_allclose(value_c, value, rtol=1e-6, err_msg=name)
        for g, gc in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_c), strict=True):
            np.testing.assert_allclose(gc, g, rtol=1e-4, atol=1e-6 * float(np.abs(g).max() + 1e-12), err_msg=name)
    (loss, (ce, rep)), (loss_c, (ce_c, rep_c)) = full["retain"](params, params, batch), chunked["retain"](
        params, params, batch)  # fmt: skip
    np.testing.assert_allclose([loss_c, ce_c, rep_c], [loss, ce, rep], rtol=1e-6)


def test_the_planner_counts_one_chunk_of_logits(toy):
    config, model, _, _ = toy
    tar = dataclasses.replace(config.tar, tamper_batch_size=64, adversary_batch_size=64)
    full = tar_bytes(model, tar, 512)
    chunked = tar_bytes(model, dataclasses.replace(tar, loss_chunk_size=256), 512)
    assert chunked < full  # logits [64, 512, vocab] at once vs 256 tokens of them
