"""Parity of the GPT-2 port with transformers PyTorch on a tiny seeded config saved with save_pretrained."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from jaxtar.models import (
    GPT2_LORA_TARGETS,
    CheckpointError,
    LoraConfig,
    LoraParams,
    cast_params,
    from_pretrained,
    hf_state_dict,
    init_lora,
    merge_lora,
    save_pretrained,
)
from jaxtar.models.layers import causal_mask

VOCAB, LENGTH = 128, 12


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=64,
        n_layer=3,
        n_head=4,
        n_positions=64,
        initializer_range=0.08,  # sharper logits than the default 0.02, so argmax comparisons mean something
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    torch_model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():  # non-trivial norm weights and biases, so a mapping error cannot hide behind ones/zeros
        for n, p in torch_model.named_parameters():
            if ".ln_" in n or n.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("gpt2")
    torch_model.save_pretrained(folder)
    model, params = from_pretrained(folder)
    apply = jax.jit(lambda p, i, m, pos: model.apply(p, i, m, position_ids=pos, output_hidden_states=True))
    return torch_model, model, params, folder, apply


def _inputs(batch=2, seed=0, left_pad=True):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (batch, LENGTH))
    mask = np.ones((batch, LENGTH), np.int64)
    if left_pad:
        mask[1, :3] = 0
    else:
        mask[1, -4:] = 0
    return ids, mask


def _torch_forward(torch_model, ids, mask, pos=None, **kwargs):
    with torch.no_grad():
        pos = None if pos is None else torch.tensor(pos)
        return torch_model(torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=pos, **kwargs)


@pytest.mark.parametrize("padding", ["left_positions_from_mask", "right_default_positions"])
def test_logits_and_hidden_states_match(pair, padding):
    torch_model, model, params, _, apply = pair
    left = padding.startswith("left")
    ids, mask = _inputs(left_pad=left)
    # left padding with positions counted from the first real token (as generation does); right padding with 0..T-1
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0) if left else np.broadcast_to(np.arange(LENGTH), ids.shape)
    ref = _torch_forward(torch_model, ids, mask, pos if left else None, output_hidden_states=True)
    out = apply(params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pos))
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(out.logits)[valid], ref.logits.numpy()[valid], atol=1e-4, rtol=0)
    # transformers' convention: embeddings (wte + wpe), each block's output, ln_f applied to the last entry
    assert len(out.hidden_states) == len(ref.hidden_states) == 4
    for ours, theirs in zip(out.hidden_states, ref.hidden_states, strict=True):
        np.testing.assert_allclose(np.asarray(ours)[valid], theirs.numpy()[valid], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(np.asarray(out.last_hidden_state), np.asarray(out.hidden_states[-1]))


def test_gradients_match(pair):
    torch_model, model, params, _, _ = pair
    ids, mask = _inputs(seed=1)
    weights = np.random.default_rng(2).normal(size=(2, LENGTH, VOCAB)).astype(np.float32) * mask[..., None]

    def loss(p):
        return jnp.sum(model.apply(p, jnp.asarray(ids), jnp.asarray(mask)).logits * weights)

    grads = jax.jit(jax.grad(loss))(params)
    torch_model.zero_grad()
    out = torch_model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    (out * torch.tensor(weights)).sum().backward()
    ours = hf_state_dict(model, grads)  # the gradient tree mapped through the same table
    theirs = {n: p.grad.numpy() for n, p in torch_model.named_parameters()}
    assert set(ours) == set(theirs)  # every parameter (the tied lm_head is transformer.wte.weight)
    for key, g in ours.items():
        ref = theirs[key]
        scale = np.abs(ref).max() + 1e-6
        assert np.abs(g - ref).max() / scale < 1e-4, f"gradient of {key} differs"


def test_bf16_argmax_agreement(pair):
    """bf16 params/compute keep the fp32 argmax wherever the fp32 top-2 margin is not a near-tie (see test_llama)."""
    torch_model, model, params, _, apply = pair
    ids = np.random.default_rng(3).integers(0, VOCAB, (8, 32))
    ref = _torch_forward(torch_model, ids, np.ones_like(ids)).logits.numpy()
    out = jax.jit(lambda p, i: model.apply(cast_params(p, jnp.bfloat16), i).logits)(params, jnp.asarray(ids))
    assert out.dtype == jnp.float32
    top2 = np.sort(ref, axis=-1)[..., -2:]
    decided = (top2[..., 1] - top2[..., 0]) > 0.1
    assert decided.mean() > 0.5
    agree = np.asarray(out).argmax(-1) == ref.argmax(-1)
    assert agree[decided].mean() >= 0.99, agree[decided].mean()
    assert agree.mean() >= 0.95, agree.mean()


def test_round_trip_through_transformers(pair, tmp_path):
    torch_model, model, params, _, _ = pair
    out_dir = save_pretrained(model, params, tmp_path / "exported", max_shard_bytes=60_000)
    assert (out_dir / "model.safetensors.index.json").is_file()  # small limit forces sharding
    assert json.loads((out_dir / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(out_dir, attn_implementation="eager").eval()
    ids, mask = _inputs(seed=4)
    a = _torch_forward(torch_model, ids, mask).logits.numpy()
    b = _torch_forward(reloaded, ids, mask).logits.numpy()
    np.testing.assert_allclose(a[mask.astype(bool)], b[mask.astype(bool)], atol=1e-5, rtol=0)
    model2, params2 = from_pretrained(out_dir)
    assert model2.config == model.config
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), params, params2)


def test_unprefixed_keys_and_mask_buffers_load(pair, tmp_path):
    """Older hub checkpoints (GPT2Model layout, ``h.{i}...``) with ``attn.bias``/``attn.masked_bias`` buffers."""
    torch_model, _, params, folder, _ = pair
    tensors = safetensors.numpy.load_file(str(folder / "model.safetensors"))
    legacy = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    n_pos = torch_model.config.n_positions
    for i in range(torch_model.config.n_layer):
        legacy[f"h.{i}.attn.bias"] = np.tril(np.ones((n_pos, n_pos), np.float32))[None, None]
        legacy[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    legacy["lm_head.weight"] = legacy["wte.weight"]
    out = tmp_path / "legacy"
    out.mkdir()
    safetensors.numpy.save_file(legacy, str(out / "model.safetensors"))
    (out / "config.json").write_text((folder / "config.json").read_text())
    _, params2 = from_pretrained(out)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), params, params2)
    # an unknown key is still refused
    legacy["h.0.attn.c_attn.extra"] = np.zeros(3, np.float32)
    safetensors.numpy.save_file(legacy, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match="h.0.attn.c_attn.extra"):
        from_pretrained(out)


def test_lora_merge_matches_adapter(pair):
    _, model, params, _, apply = pair
    config = LoraConfig(rank=2, alpha=4.0, dropout=0.0, targets=GPT2_LORA_TARGETS)
    shapes = jax.eval_shape(lambda: init_lora(jax.random.key(0), model, params, config))  # the names exist
    rng = np.random.default_rng(5)  # non-zero B so the adapters change the output
    weights = {t: {n: 0.1 * rng.normal(size=x.shape).astype(np.float32) for n, x in ab.items()}
               for t, ab in shapes.weights.items()}  # fmt: skip
    lora = LoraParams(weights=weights, scale=shapes.scale, dropout=0.0)
    ids, mask = _inputs(seed=5)
    pos = jnp.broadcast_to(jnp.arange(LENGTH), ids.shape)
    with_adapter = jax.jit(lambda p, lo, i, m: model.apply(p, i, m, lora=lo).logits)(params, lora, ids, mask)
    merged = apply(jax.jit(merge_lora)(params, lora), jnp.asarray(ids), jnp.asarray(mask), pos).logits
    base = apply(params, jnp.asarray(ids), jnp.asarray(mask), pos).logits
    np.testing.assert_allclose(np.asarray(with_adapter), np.asarray(merged), atol=1e-4, rtol=0)
    assert np.abs(np.asarray(with_adapter) - np.asarray(base)).max() > 1e-2


def test_kv_cache_forward_matches_full_forward(pair):
    """Prefill then decode through ``forward`` with a cache gives the full-sequence logits (generation's contract)."""
    _, model, params, _, apply = pair
    c = model.config
    ids, mask = _inputs(seed=6)
    mask[:] = 1
    pos = jnp.broadcast_to(jnp.arange(LENGTH), ids.shape)
    full = apply(params, jnp.asarray(ids), jnp.asarray(mask), pos).logits

    @jax.jit
    def cached(p, ids):
        module = model.module(p)
        b, t = ids.shape
        cache = {n: jnp.zeros((c.num_layers, b, t, c.num_kv_heads, c.head_dim)) for n in ("k", "v")}
        valid = jnp.ones((b, t), bool)
        logits = []
        for start, stop in ((0, t - 1), (t - 1, t)):  # a prefill, then one decode step
            allowed = causal_mask(pos[:, start:stop], jnp.arange(t), valid)
            out, cache = module.forward(ids[:, start:stop], pos[:, start:stop], allowed, cache, start, False, None,
                                        None, None)  # fmt: skip
            logits.append(out.logits)
        return jnp.concatenate(logits, axis=1)

    np.testing.assert_allclose(np.asarray(cached(params, jnp.asarray(ids))), np.asarray(full), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"activation_function": "mish"}, "activation_function 'mish'"),
        ({"add_cross_attention": True}, "add_cross_attention"),
        ({"tie_word_embeddings": False}, "tie_word_embeddings"),
    ],
)
def test_unsupported_config_features_are_refused(pair, tmp_path, override, message):
    _, _, _, folder, _ = pair
    config = {**json.loads((folder / "config.json").read_text()), **override}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=message):
        from_pretrained(tmp_path)


def test_greedy_generation_with_cache_matches_transformers(tmp_path):
    from jaxtar.models.generate import generate

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64, initializer_range=0.2
    )
    torch_model = transformers.GPT2LMHeadModel(config).eval()
    torch_model.save_pretrained(tmp_path / "gpt2")
    model, params = from_pretrained(tmp_path / "gpt2")
    ids = np.array([[5, 17, 42, 9]])
    ours = np.asarray(generate(model, params, ids, max_new_tokens=6, eos_token_id=[]))[0]
    with torch.no_grad():
        theirs = torch_model.generate(torch.tensor(ids), max_new_tokens=6, do_sample=False, eos_token_id=None)[0]
    np.testing.assert_array_equal(ours, theirs.numpy())


def test_a_key_spelled_two_ways_is_refused(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "dup")
    tensors = safetensors.numpy.load_file(tmp_path / "dup" / "model.safetensors")
    tensors["h.0.ln_1.weight"] = tensors["transformer.h.0.ln_1.weight"]
    safetensors.numpy.save_file(tensors, tmp_path / "dup" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="both fill"):
        from_pretrained(tmp_path / "dup")
