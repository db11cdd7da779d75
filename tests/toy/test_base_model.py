"""The toy base model: a smoke training run, MCQ scoring against PyTorch, and the shipped checkpoint's accuracy."""

import dataclasses
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxtar.data.mcq import build_mcq_prompt
from jaxtar.models import from_pretrained
from jaxtar.toy import (
    TOY_WORLD_VERSION,
    ToyTrainConfig,
    mcq_letter_accuracy,
    mcq_letter_predictions,
    toy_base_model_path,
    toy_world,
    train_toy_base_model,
)

SMOKE = ToyTrainConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, steps=3, batch_size=4,
                       warmup_steps=1, seq_len=48)  # fmt: skip


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    world = toy_world(0)
    return world, train_toy_base_model(world, tmp_path_factory.mktemp("toy") / "base", SMOKE, log=None)


def test_smoke_training_writes_a_loadable_checkpoint(smoke):
    world, base = smoke
    files = {p.name for p in base.path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "toy_world.json"} <= files
    meta = json.loads((base.path / "toy_world.json").read_text())
    assert meta["toy_world_version"] == TOY_WORLD_VERSION and meta["train_config"]["steps"] == 3
    assert meta["forget_mcq_accuracy"] == base.forget_accuracy
    model, params = from_pretrained(base.path)
    ids = np.asarray(world.tokenizer([world.forget_texts[0]])["input_ids"])
    np.testing.assert_allclose(
        np.asarray(model.apply(params, ids).logits), np.asarray(base.model.apply(base.params, ids).logits), atol=1e-5
    )
    with pytest.raises(FileExistsError):
        train_toy_base_model(world, base.path, SMOKE, log=None)
    with pytest.raises(ValueError, match="warmup_steps"):
        ToyTrainConfig(steps=3, warmup_steps=3)


def test_start_from_fine_tunes_the_given_model_with_its_own_tokenizer(smoke, tmp_path):
    """``start_from`` loads that checkpoint (its shape, not the config's) and its tokenizer; at a negligible learning
    rate the result is the starting weights, so training really began from them rather than from a fresh init."""
    world, base = smoke
    still = dataclasses.replace(SMOKE, hidden_size=64, learning_rate=1e-12)  # the shape fields are ignored
    tuned = train_toy_base_model(world, tmp_path / "tuned", still, start_from=base.path, log=None)
    assert tuned.model.config.hidden_size == base.model.config.hidden_size == SMOKE.hidden_size
    for a, b in zip(jax.tree.leaves(tuned.params), jax.tree.leaves(base.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert json.loads((tuned.path / "toy_world.json").read_text())["start_from"] == str(base.path)
    assert (tuned.path / "tokenizer.json").is_file()
    assert tuned.forget_accuracy == base.forget_accuracy and tuned.retain_accuracy == base.retain_accuracy


def test_letter_predictions_match_pytorch_on_unpadded_prompts(smoke):
    from transformers import AutoModelForCausalLM

    world, base = smoke
    items = list(world.forget_mcq[:6]) + list(world.retain_mcq[-6:])
    torch_model = AutoModelForCausalLM.from_pretrained(str(base.path)).eval()
    letters = world.tokenizer.convert_tokens_to_ids(list("ABCD"))
    want = []
    with torch.no_grad():
        for item in items:  # one unpadded prompt at a time: an independent implementation of the scoring
            ids = torch.tensor([world.tokenizer(build_mcq_prompt(item))["input_ids"]])
            want.append(int(torch_model(ids).logits[0, -1, letters].argmax()))
    got = mcq_letter_predictions(base.model, base.params, world.tokenizer, items)  # left-padded batch
    assert got.tolist() == want
    accuracy = mcq_letter_accuracy(base.model, base.params, world.tokenizer, items)
    assert accuracy == np.mean(np.array(want) == [i.answer for i in items])


class _EchoModel:
    """Predicts the letter (sum of the prompt ids) mod 4 at the last position: cheap and padding-invariant."""

    def __init__(self, letters, vocab_size):
        self.letters, self.vocab_size = jnp.asarray(letters), vocab_size

    def apply(self, params, ids, mask):
        logits = jax.nn.one_hot(self.letters[ids.sum(-1) % 4], self.vocab_size) * params["scale"]
        return types.SimpleNamespace(logits=jnp.broadcast_to(logits[:, None], ids.shape + (self.vocab_size,)))


def test_predictions_do_not_depend_on_the_batch_size():
    world = toy_world(0)
    tok = world.tokenizer
    fake = _EchoModel(tok.convert_tokens_to_ids(list("ABCD")), len(tok))
    params = {"scale": jnp.float32(10.0)}
    items = list(world.forget_mcq[:7])
    one = mcq_letter_predictions(fake, params, tok, items, batch_size=8)
    assert len(set(one.tolist())) > 1
    np.testing.assert_array_equal(mcq_letter_predictions(fake, params, tok, items, batch_size=3), one)
    with pytest.raises(ValueError, match="no items"):
        mcq_letter_predictions(fake, params, tok, [])


def test_shipped_base_model_knows_both_domains():
    world = toy_world(0)
    path = toy_base_model_path(0, train_if_missing=False)
    meta = json.loads((path / "toy_world.json").read_text())
    model, params = from_pretrained(path)
    forget = mcq_letter_accuracy(model, params, world.tokenizer, world.forget_mcq)
    retain = mcq_letter_accuracy(model, params, world.tokenizer, world.retain_mcq)
    assert forget >= 0.8 and retain >= 0.8, (forget, retain)  # chance is 0.25
    assert forget == pytest.approx(meta["forget_mcq_accuracy"]) and retain == pytest.approx(meta["retain_mcq_accuracy"])


def test_missing_model_is_not_trained_when_told(tmp_path):
    with pytest.raises(FileNotFoundError, match="seed 12345"):
        toy_base_model_path(12345, cache_dir=tmp_path, train_if_missing=False)
