"""Parity of the BERT port with transformers PyTorch on tiny seeded configs saved with save_pretrained.

Variants: ``base`` (BertModel, unprefixed keys), ``cls`` (BertForSequenceClassification, 3 labels) and ``cls_nobias``
(the same head without a bias, as MLAC uses; transformers sees a zero bias).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from jaxtar.models import (
    BERT_LORA_TARGETS,
    CheckpointError,
    cast_params,
    from_pretrained,
    hf_state_dict,
    save_pretrained,
    with_classifier,
)

VOCAB, LENGTH, LABELS = 128, 10, 3
HF_CONFIG = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=96,
    max_position_embeddings=32,
    initializer_range=0.08,
    layer_norm_eps=1e-12,
)


def _torch_model(variant):
    config = transformers.BertConfig(**HF_CONFIG, num_labels=LABELS)
    torch.manual_seed(0)
    cls = transformers.BertModel if variant == "base" else transformers.BertForSequenceClassification
    model = cls._from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():  # non-trivial norm weights and biases, so a mapping error cannot hide behind ones/zeros
        for n, p in model.named_parameters():
            if "LayerNorm" in n or n.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
        if variant == "cls_nobias":
            model.classifier.bias.zero_()
    return model


@pytest.fixture(scope="module", params=["base", "cls", "cls_nobias"])
def pair(request, tmp_path_factory):
    variant = request.param
    torch_model = _torch_model(variant)
    folder = tmp_path_factory.mktemp(variant)
    torch_model.save_pretrained(folder)
    if variant == "cls_nobias":  # drop the bias from the checkpoint and declare the head bias-free
        tensors = safetensors.numpy.load_file(str(folder / "model.safetensors"))
        del tensors["classifier.bias"]
        safetensors.numpy.save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "classifier_bias": False}))
    model, params = from_pretrained(folder)
    apply = jax.jit(
        lambda p, i, m, tt, pos: model.apply(p, i, m, token_type_ids=tt, position_ids=pos, output_hidden_states=True)
    )
    return variant, torch_model, model, params, folder, apply


def _inputs(batch=3, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (batch, LENGTH))
    mask = np.ones((batch, LENGTH), np.int64)
    mask[1, -4:] = 0  # right padding
    mask[2, :2] = 0  # left padding
    token_types = (np.arange(LENGTH) >= LENGTH // 2).astype(np.int64) * np.ones((batch, 1), np.int64)
    positions = np.broadcast_to(np.arange(LENGTH) + 3, (batch, LENGTH)).copy()  # not the default 0..T-1
    return ids, mask, token_types, positions


def _torch_forward(torch_model, ids, mask, token_types, positions, **kwargs):
    t = torch.tensor
    return torch_model(
        t(ids), attention_mask=t(mask), token_type_ids=t(token_types), position_ids=t(positions), **kwargs
    )


def test_config_and_head(pair):
    variant, _, model, params, _, _ = pair
    assert model.config.num_labels == (0 if variant == "base" else LABELS)
    assert model.config.classifier_bias == (variant != "cls_nobias")
    assert ("classifier" in params) == (variant != "base")
    assert ("bias" in params.get("classifier", {})) == (variant == "cls")


def test_outputs_match(pair):
    variant, torch_model, _, params, _, apply = pair
    if variant == "base":
        pytest.skip("same code path as 'cls' without its head; test_minilm checks a real BertModel checkpoint")
    ids, mask, token_types, positions = _inputs()
    with torch.no_grad():
        ref = _torch_forward(torch_model, ids, mask, token_types, positions, output_hidden_states=True)
        trunk = _torch_forward(torch_model.bert, ids, mask, token_types, positions)
    out = apply(params, *map(jnp.asarray, (ids, mask, token_types, positions)))
    valid = mask.astype(bool)
    # transformers' convention: the embedding output, then each layer's output (the last is last_hidden_state)
    assert len(out.hidden_states) == len(ref.hidden_states) == 4
    for ours, theirs in zip(out.hidden_states, ref.hidden_states, strict=True):
        np.testing.assert_allclose(np.asarray(ours)[valid], theirs.numpy()[valid], atol=1e-4, rtol=0)
    last = trunk.last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(out.last_hidden_state)[valid], last[valid], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(out.pooled_output), trunk.pooler_output.numpy(), atol=1e-4, rtol=0)
    assert out.logits.shape == (3, LABELS) and out.logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out.logits), ref.logits.numpy(), atol=1e-4, rtol=0)


def test_gradients_match(pair):
    """Gradients of a loss touching every output (hidden states, pooled, logits) w.r.t. every parameter."""
    variant, torch_model, model, params, _, _ = pair
    if variant != "cls":
        pytest.skip("'cls' covers every trunk parameter plus the head; the others only rename or drop keys")
    ids, mask, token_types, positions = _inputs(seed=1)
    rng = np.random.default_rng(2)
    w_hidden = rng.normal(size=(3, LENGTH, 64)).astype(np.float32) * mask[..., None]
    w_pooled = rng.normal(size=(3, 64)).astype(np.float32)
    w_logits = rng.normal(size=(3, LABELS)).astype(np.float32)

    def loss(p):
        out = model.apply(p, *map(jnp.asarray, (ids, mask)), token_type_ids=token_types, position_ids=positions)
        total = jnp.sum(out.last_hidden_state * w_hidden) + jnp.sum(out.pooled_output * w_pooled)
        return total + jnp.sum(out.logits * w_logits)

    grads = jax.jit(jax.grad(loss))(params)
    torch_model.zero_grad()
    base = _torch_forward(torch_model.bert, ids, mask, token_types, positions)
    total = (base.last_hidden_state * torch.tensor(w_hidden)).sum()
    total = total + (base.pooler_output * torch.tensor(w_pooled)).sum()
    total = total + (torch_model.classifier(base.pooler_output) * torch.tensor(w_logits)).sum()
    total.backward()
    ours = hf_state_dict(model, grads)  # the gradient tree mapped through the same table
    theirs = {n: p.grad.numpy() for n, p in torch_model.named_parameters()}
    assert set(ours) == set(theirs)
    overall = max(np.abs(g).max() for g in theirs.values())
    for key, g in ours.items():
        ref = theirs[key]
        if key.endswith("attention.self.key.bias"):  # softmax ignores q . b_k (same for every key): exactly zero
            assert max(np.abs(g).max(), np.abs(ref).max()) < 1e-5 * overall, key
            continue
        scale = np.abs(ref).max() + 1e-6
        assert np.abs(g - ref).max() / scale < 1e-4, f"gradient of {key} differs"


def test_bf16_agreement(pair):
    """bf16 params/compute: pooled outputs stay close and the classifier argmax agrees where it is not a near-tie."""
    variant, torch_model, model, params, _, _ = pair
    if variant != "cls":
        pytest.skip("bf16 is checked on the classification variant")
    ids = np.random.default_rng(3).integers(0, VOCAB, (64, LENGTH))
    with torch.no_grad():
        ref = torch_model(torch.tensor(ids), output_hidden_states=False)
        ref_pooled = torch_model.bert(torch.tensor(ids)).pooler_output.numpy()
    out = jax.jit(lambda p, i: model.apply(cast_params(p, jnp.bfloat16), i))(params, jnp.asarray(ids))
    assert out.logits.dtype == jnp.float32
    pooled = np.asarray(out.pooled_output.astype(jnp.float32))
    cos = np.sum(pooled * ref_pooled, -1) / np.linalg.norm(pooled, axis=-1) / np.linalg.norm(ref_pooled, axis=-1)
    assert cos.min() > 0.995, cos.min()
    assert np.abs(pooled - ref_pooled).max() < 0.05
    logits = ref.logits.numpy()
    top2 = np.sort(logits, axis=-1)[..., -2:]
    decided = (top2[..., 1] - top2[..., 0]) > 0.05
    assert decided.mean() > 0.5
    agree = np.asarray(out.logits).argmax(-1) == logits.argmax(-1)
    assert agree[decided].mean() >= 0.99, agree[decided].mean()


def test_round_trip_through_transformers(pair, tmp_path):
    variant, torch_model, model, params, _, _ = pair
    out_dir = save_pretrained(model, params, tmp_path / "exported")
    config = json.loads((out_dir / "config.json").read_text())
    arch = "BertModel" if variant == "base" else "BertForSequenceClassification"
    assert config["architectures"] == [arch]
    keys = set(safetensors.numpy.load_file(str(out_dir / "model.safetensors")))
    assert ("pooler.dense.weight" in keys) == (variant == "base")  # BertModel layout is unprefixed
    reloaded = getattr(transformers, arch).from_pretrained(out_dir, attn_implementation="eager").eval()
    if variant == "cls_nobias":  # transformers initialises the missing bias to zeros: the same model
        assert torch.count_nonzero(reloaded.classifier.bias) == 0
    ids, mask, token_types, positions = _inputs(seed=4)
    with torch.no_grad():
        a = _torch_forward(torch_model, ids, mask, token_types, positions)
        b = _torch_forward(reloaded, ids, mask, token_types, positions)
    name = "last_hidden_state" if variant == "base" else "logits"
    np.testing.assert_allclose(getattr(a, name).numpy(), getattr(b, name).numpy(), atol=1e-5, rtol=0)
    model2, params2 = from_pretrained(out_dir)
    assert model2.config == model.config
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), params, params2)


def test_prefixed_legacy_keys_load(pair, tmp_path):
    """``bert.``-prefixed keys with ``LayerNorm.gamma/beta`` names, id buffers and pre-training heads (ignored)."""
    variant, _, _, params, folder, _ = pair
    if variant != "base":
        pytest.skip("one variant suffices")
    tensors = safetensors.numpy.load_file(str(folder / "model.safetensors"))
    legacy = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in tensors.items()}  # fmt: skip
    legacy["bert.embeddings.position_ids"] = np.arange(32)[None]
    legacy["cls.predictions.bias"] = np.zeros(VOCAB, np.float32)
    legacy["cls.seq_relationship.weight"] = np.zeros((2, 64), np.float32)
    out = tmp_path / "legacy"
    out.mkdir()
    safetensors.numpy.save_file(legacy, str(out / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "architectures": ["BertForPreTraining"]}))
    _, params2 = from_pretrained(out)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), params, params2)
    # strict: a key no rule claims is refused, as is a missing one
    safetensors.numpy.save_file({**legacy, "bert.encoder.layer.0.extra": np.zeros(2, np.float32)},
                                str(out / "model.safetensors"))  # fmt: skip
    with pytest.raises(CheckpointError, match="encoder.layer.0.extra"):
        from_pretrained(out)
    del legacy["bert.pooler.dense.bias"]
    safetensors.numpy.save_file(legacy, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match="pooler.dense.bias"):
        from_pretrained(out)


def test_with_classifier_and_lora_targets(pair):
    """A fresh bias-free head on the encoder gives exactly the params tree its config describes."""
    variant, _, model, params, _, _ = pair
    if variant != "base":
        pytest.skip("one variant suffices")
    assert set(BERT_LORA_TARGETS) <= set(params["layers"])  # the documented LoRA target names exist
    model2, params2 = with_classifier(model, params, 5, bias=False, seed=1)
    assert model2.config.num_labels == 5 and not model2.config.classifier_bias
    want = jax.tree.map(lambda x: (x.shape, x.dtype), model2.abstract_params())
    assert jax.tree.map(lambda x: (x.shape, x.dtype), params2) == want
    assert 0.5 < np.std(np.asarray(params2["classifier"]["kernel"])) / model.config.initializer_range < 1.5
    assert params2["layers"] is params["layers"]  # the encoder is shared, not copied


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"is_decoder": True}, "is_decoder"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"architectures": ["BertForQuestionAnswering"]}, "BertForQuestionAnswering"),
        ({"hidden_act": "mish"}, "hidden_act 'mish'"),
    ],
)
def test_unsupported_config_features_are_refused(tmp_path, override, message):
    config = {"model_type": "bert", **HF_CONFIG, **override}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        from_pretrained(tmp_path)
