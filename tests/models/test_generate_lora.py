"""KV-cache generation and LoRA adapters on the tiny Llama."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtar.models import LlamaConfig, LoraConfig, create_model, init_lora, merge_lora
from jaxtar.models.generate import generate


@pytest.fixture(scope="module")
def tiny():
    return create_model(LlamaConfig.tiny(initializer_range=0.1, eos_token_id=None), seed=0)


def _naive_greedy(model, params, ids, steps):
    """Greedy decoding by re-running the full forward pass each step (no cache)."""
    apply = jax.jit(lambda p, i: model.apply(p, i).logits[:, -1])
    for _ in range(steps):
        ids = jnp.concatenate([ids, jnp.argmax(apply(params, ids), -1)[:, None]], axis=1)
    return ids


def test_cached_greedy_equals_full_recompute(tiny):
    model, params = tiny
    ids = jnp.array([[3, 17, 42, 9, 100], [7, 7, 8, 200, 1]])
    np.testing.assert_array_equal(
        np.asarray(generate(model, params, ids, max_new_tokens=6)), np.asarray(_naive_greedy(model, params, ids, 6))
    )


def test_left_padding_does_not_change_generation(tiny):
    model, params = tiny
    prompt = jnp.array([[3, 17, 42]])
    alone = generate(model, params, prompt, max_new_tokens=5)[0, 3:]
    padded = jnp.array([[0, 0, 3, 17, 42], [5, 6, 7, 8, 9]])
    mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    batched = generate(model, params, padded, mask, max_new_tokens=5)[0, 5:]
    np.testing.assert_array_equal(np.asarray(alone), np.asarray(batched))


def test_sampling_is_seeded_and_respects_top_k(tiny):
    model, params = tiny
    ids = jnp.array([[3, 17, 42]])
    a = generate(model, params, ids, max_new_tokens=8, temperature=1.0, key=jax.random.key(1))
    b = generate(model, params, ids, max_new_tokens=8, temperature=1.0, key=jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    greedy = generate(model, params, ids, max_new_tokens=8)
    top1 = generate(model, params, ids, max_new_tokens=8, temperature=1.0, top_k=1, key=jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(greedy), np.asarray(top1))
    tiny_p = generate(model, params, ids, max_new_tokens=8, temperature=1.0, top_p=1e-6, key=jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(greedy), np.asarray(tiny_p))


def test_eos_stops_a_row_and_pads():
    model, params = create_model(LlamaConfig.tiny(initializer_range=0.1, eos_token_id=None), seed=0)
    ids = jnp.array([[3, 17, 42]])
    free = np.asarray(generate(model, params, ids, max_new_tokens=6))[0, 3:]
    eos = int(free[1])
    stopped = np.asarray(generate(model, params, ids, max_new_tokens=6, eos_token_id=eos, pad_token_id=255))[0, 3:]
    first = int(np.argmax(free == eos))
    np.testing.assert_array_equal(stopped[: first + 1], free[: first + 1])
    assert (stopped[first + 1 :] == 255).all()


def test_generation_validates_arguments(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match="PRNG key"):
        generate(model, params, jnp.array([[1, 2]]), max_new_tokens=2, temperature=0.5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, params, jnp.array([[1, 2]]), max_new_tokens=0)


def test_fresh_lora_is_a_no_op_and_merges_exactly(tiny):
    model, params = tiny
    apply = jax.jit(lambda p, lo, i: model.apply(p, i, lora=lo).logits)
    lora = init_lora(jax.random.key(0), model, params, LoraConfig(rank=4, alpha=8, dropout=0.0))
    ids = jnp.array([[3, 17, 42, 9]])
    base = jax.jit(lambda p, i: model.apply(p, i).logits)(params, ids)
    np.testing.assert_allclose(np.asarray(apply(params, lora, ids)), np.asarray(base), atol=1e-6)
    # perturb b so the adapter matters, then compare unmerged vs merged application
    lora = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), lora)
    adapted = apply(params, lora, ids)
    assert np.abs(np.asarray(adapted - base)).max() > 1e-3
    merged = apply(merge_lora(params, lora), None, ids)
    np.testing.assert_allclose(np.asarray(adapted), np.asarray(merged), atol=2e-5)


def test_lora_gradients_flow_only_to_adapters_and_dropout_uses_key(tiny):
    model, params = tiny
    cfg = LoraConfig(rank=2, alpha=4, dropout=0.5, targets=("q_proj", "down_proj"))
    lora = init_lora(jax.random.key(0), model, params, cfg)
    assert set(lora.weights) == {"q_proj", "down_proj"} and lora.scale == 2.0
    ids = jnp.array([[3, 17, 42, 9]])

    @jax.jit
    def loss(lo, key):
        return jnp.mean(model.apply(params, ids, lora=lo, lora_rng=key).logits ** 2)

    grads = jax.grad(loss)(lora, jax.random.key(5))
    assert isinstance(grads, type(lora)) and grads.scale == lora.scale
    assert float(jnp.abs(grads.weights["q_proj"]["b"]).max()) > 0  # b receives gradient at init (a != 0)
    perturbed = jax.tree.map(lambda x: x + 0.1, lora)
    same = [float(loss(perturbed, jax.random.key(k))) for k in (5, 5, 6)]
    assert same[0] == same[1] and same[0] != same[2]
    with pytest.raises(ValueError, match="not projections"):
        init_lora(jax.random.key(0), model, params, LoraConfig(targets=("c_attn",)))
