"""Parity of the Llama-family port with transformers PyTorch on tiny seeded configs saved with save_pretrained."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jaxtar.models import LlamaConfig, cast_params, create_model, from_pretrained, hf_state_dict, save_pretrained

VARIANTS = {
    # name: (transformers config class, kwargs)
    "llama2_mha_untied": (transformers.LlamaConfig, dict(num_attention_heads=4, num_key_value_heads=4)),
    "llama3_gqa_scaled": (
        transformers.LlamaConfig,
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
    ),
    "llama_mqa_tied_bias": (
        transformers.LlamaConfig,
        dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True, attention_bias=True),
    ),
    "mistral_sliding": (
        transformers.MistralConfig,
        dict(num_attention_heads=4, num_key_value_heads=2, sliding_window=4),
    ),
    "qwen2_bias": (transformers.Qwen2Config, dict(num_attention_heads=4, num_key_value_heads=2)),
    "smollm_tied_theta": (
        transformers.LlamaConfig,
        dict(
            num_attention_heads=3, num_key_value_heads=1, tie_word_embeddings=True, rope_parameters=dict(rope_theta=1e5)
        ),
    ),
    "linear_rope": (
        transformers.LlamaConfig,
        dict(num_attention_heads=4, num_key_value_heads=2, rope_parameters=dict(rope_type="linear", factor=2.0)),
    ),
}


def _hf_model(name, tmp_path_factory):
    cls, kwargs = VARIANTS[name]
    kwargs = dict(kwargs)
    rope = kwargs.pop("rope_parameters", None)
    hidden = 48 if kwargs["num_attention_heads"] == 3 else 64
    config = cls(
        vocab_size=128,
        hidden_size=hidden,
        intermediate_size=96,
        num_hidden_layers=3,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        initializer_range=0.08,  # sharper logits than the default 0.02, so argmax comparisons mean something
        **kwargs,
    )
    if rope is not None:
        config.rope_parameters = {"rope_theta": config.rope_parameters["rope_theta"], "rope_type": "default", **rope}
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():  # non-trivial norm weights and biases, so a mapping error cannot hide behind ones/zeros
        for n, p in model.named_parameters():
            if n.endswith("layernorm.weight") or n.endswith("norm.weight") or n.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder)
    return model, folder


def _inputs(batch=2, length=12, vocab=128, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (batch, length))
    mask = np.ones((batch, length), np.int64)
    mask[1, :3] = 0  # left padding on the second row
    return ids, mask


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
    torch_model, folder = _hf_model(request.param, tmp_path_factory)
    model, params = from_pretrained(folder)
    return request.param, torch_model, model, params, folder


def test_logits_and_hidden_states_match(pair):
    name, torch_model, model, params, _ = pair
    ids, mask = _inputs()
    with torch.no_grad():
        ref = torch_model(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    apply = jax.jit(lambda p, i, m: model.apply(p, i, m, output_hidden_states=True))
    out = apply(params, jnp.asarray(ids), jnp.asarray(mask))
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(out.logits)[valid], ref.logits.numpy()[valid], atol=1e-4, rtol=0)
    assert len(out.hidden_states) == len(ref.hidden_states)
    for ours, theirs in zip(out.hidden_states, ref.hidden_states, strict=True):
        np.testing.assert_allclose(np.asarray(ours)[valid], theirs.numpy()[valid], atol=1e-4, rtol=0)


def test_gradients_match(pair):
    name, torch_model, model, params, _ = pair
    ids, mask = _inputs(seed=1)
    weights = np.random.default_rng(2).normal(size=(2, 12, 128)).astype(np.float32) * mask[..., None]

    def loss(p):
        return jnp.sum(model.apply(p, jnp.asarray(ids), jnp.asarray(mask)).logits * weights)

    grads = jax.jit(jax.grad(loss))(params)
    torch_model.zero_grad()
    out = torch_model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    (out * torch.tensor(weights)).sum().backward()
    ours = hf_state_dict(model, grads)  # the gradient tree mapped through the same table
    theirs = {n: p.grad.numpy() for n, p in torch_model.named_parameters()}
    assert set(ours) <= set(theirs)
    for key, g in ours.items():
        ref = theirs[key]
        scale = np.abs(ref).max() + 1e-6
        assert np.abs(g - ref).max() / scale < 1e-4, f"{name}: gradient of {key} differs"


def test_bf16_argmax_agreement(pair):
    """bf16 params/compute keep the fp32 argmax wherever the fp32 top-2 margin is not a near-tie.

    Random tiny models have many near-ties, where even transformers' own bf16 flips ~2 % of tokens; so the >= 99 %
    criterion is asserted on decided positions here, and on every position for the real SmolLM2 checkpoint.
    """
    name, torch_model, model, params, _ = pair
    ids, _ = _inputs(batch=8, length=32, seed=3)
    with torch.no_grad():
        ref = torch_model(torch.tensor(ids)).logits.numpy()
    out = jax.jit(lambda p, i: model.apply(p, i).logits)(cast_params(params, jnp.bfloat16), jnp.asarray(ids))
    assert out.dtype == jnp.float32
    top2 = np.sort(ref, axis=-1)[..., -2:]
    decided = (top2[..., 1] - top2[..., 0]) > 0.1
    assert decided.mean() > 0.5
    agree = np.asarray(out).argmax(-1) == ref.argmax(-1)
    assert agree[decided].mean() >= 0.99, agree[decided].mean()
    assert agree.mean() >= 0.95, agree.mean()


def test_round_trip_through_transformers(pair, tmp_path):
    name, torch_model, model, params, _ = pair
    out_dir = save_pretrained(model, params, tmp_path / "exported", max_shard_bytes=40_000)
    assert (out_dir / "model.safetensors.index.json").is_file()  # small limit forces sharding
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out_dir, attn_implementation="eager").eval()
    ids, mask = _inputs(seed=4)
    with torch.no_grad():
        a = torch_model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
        b = reloaded(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(a[mask.astype(bool)], b[mask.astype(bool)], atol=1e-5, rtol=0)
    model2, params2 = from_pretrained(out_dir)
    assert model2.config == model.config
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), params, params2)


def test_position_ids_are_respected():
    model, params = create_model(LlamaConfig.tiny(), seed=0)
    apply = jax.jit(lambda p, i, pos: model.apply(p, i, position_ids=pos).logits)
    ids = jnp.array([[5, 6, 7, 8]])
    base = apply(params, ids, jnp.array([[0, 1, 2, 3]]))
    shifted = apply(params, ids, jnp.array([[3, 4, 5, 6]]))
    # RoPE is relative: shifting every position by the same offset leaves the logits unchanged
    np.testing.assert_allclose(np.asarray(base), np.asarray(shifted), atol=2e-5)
    other = apply(params, ids, jnp.array([[0, 2, 4, 6]]))
    assert np.abs(np.asarray(base) - np.asarray(other)).max() > 1e-4
