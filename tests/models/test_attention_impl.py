"""Attention implementations: `xla` (jax.nn.dot_product_attention) against the hand-written `reference`, in values
and first- and second-order gradients; `cudnn` refused off-GPU and replaced by `xla` under second-order estimators."""

from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
import pytest

from jaxtar.meta import Estimator
from jaxtar.models import BertConfig, GPT2Config, LlamaConfig, create_model, model_for_config
from jaxtar.models.layers import attention, needs_second_order, resolve_attention_impl, with_attention_impl

B, T = 3, 12
# left padding (row 0), right padding (row 1), none (row 2): fully masked query rows included
MASK = jnp.array([[0, 0, 0] + [1] * 9, [1] * 8 + [0] * 4, [1] * 12], jnp.int32)


def _rel(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))


def _tree_rel(a, b) -> float:
    return max(_rel(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _pair(config):
    ref, params = create_model(config, seed=0)
    xla = model_for_config(dataclasses.replace(config, attention_impl="xla"))
    return ref, xla, params


def _ce(model, params, ids):
    logits = model.apply(params, ids, MASK).logits[:, :-1]
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    w = MASK[:, 1:].astype(nll.dtype)
    return jnp.sum(nll * w) / jnp.sum(w)


def _meta(model, params, ids):
    """One SGD attack step, then the loss: its gradient is second order (a double backward)."""
    g = jax.grad(_ce, argnums=1)(model, params, ids)
    return _ce(model, jax.tree.map(lambda p, d: p - 0.5 * d, params, g), ids)


@pytest.mark.parametrize(
    "config, second_order",
    [
        (LlamaConfig.tiny(vocab_size=64, num_layers=1), True),  # GQA: 4 query heads, 2 K/V heads
        (LlamaConfig.tiny(vocab_size=64, num_layers=1, num_kv_heads=1, model_type="mistral", sliding_window=4), False),
    ],
    ids=["llama-gqa", "mistral-mqa-window"],
)
def test_xla_equals_reference_values_and_gradients(config, second_order):
    ref, xla, params = _pair(config)
    ids = jax.random.randint(jax.random.key(1), (B, T), 0, config.vocab_size)
    r, x = _everything(ref, params, ids, second_order), _everything(xla, params, ids, second_order)
    assert _rel(x["logits"], r["logits"]) < 1e-5 and float(jnp.max(jnp.abs(r["logits"]))) > 0.1
    for name in r:
        assert _tree_rel(x[name], r[name]) < 1e-4, name
    if second_order:
        assert _tree_rel(r["meta"], r["grad"]) > 1e-3  # the second-order term is really there


@functools.partial(jax.jit, static_argnums=(0, 3))
def _everything(model, params, ids, second_order):
    """Logits, the gradient and, with ``second_order``, a double-backward meta-gradient and forward-over-reverse
    (the `mixed` estimator's Hessian-vector product), in one compiled program."""
    grad = lambda p: jax.grad(_ce, argnums=1)(model, p, ids)  # noqa: E731
    out = {"logits": model.apply(params, ids, MASK).logits, "grad": grad(params)}
    if second_order:
        out["meta"] = jax.grad(_meta, argnums=1)(model, params, ids)
        out["hvp"] = jax.jvp(grad, (params,), (jax.tree.map(jnp.ones_like, params),))[1]
    return out


def test_masking_is_honoured():
    """A token hidden by the padding mask changes nothing; the same token visible changes the logits."""
    config = LlamaConfig.tiny(vocab_size=64, num_layers=1, attention_impl="xla")
    model, params = create_model(config, seed=0)
    ids = jax.random.randint(jax.random.key(1), (B, T), 0, 64)
    other = ids.at[0, 1].set((ids[0, 1] + 1) % 64)  # inside row 0's left padding
    f = jax.jit(lambda x, mask: model.apply(params, x, mask).logits)
    a, b = (f(x, MASK) for x in (ids, other))
    assert float(jnp.max(jnp.abs(a[0, 3:] - b[0, 3:]))) == 0.0
    c, d = (f(x, jnp.ones_like(MASK)) for x in (ids, other))  # no mask: position 1 is visible
    assert float(jnp.max(jnp.abs(c[0, 3:] - d[0, 3:]))) > 1e-4


def test_gpt2_and_bert_xla_equal_reference():
    gpt2 = GPT2Config(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, scale_attn_by_inverse_layer_idx=True)
    bert = BertConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4)
    ids = jax.random.randint(jax.random.key(1), (B, T), 0, 64)
    for config in (gpt2, bert):
        ref, xla, params = _pair(config)
        lr, lx = (jax.jit(lambda p, i, m=m: m.apply(p, i, MASK).last_hidden_state)(params, ids) for m in (ref, xla))
        assert _rel(lx, lr) < 1e-5, type(config).__name__


def test_unknown_impl_refused():
    with pytest.raises(ValueError, match="attention_impl must be one of"):
        LlamaConfig.tiny(attention_impl="flash")
    with pytest.raises(ValueError, match="attention_impl must be one of"):
        resolve_attention_impl("flash")


def test_cudnn_refused_on_cpu():
    assert jax.default_backend() == "cpu"
    with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
        resolve_attention_impl("cudnn", "tar")
    model, params = create_model(LlamaConfig.tiny(vocab_size=64, num_layers=1, attention_impl="cudnn"), seed=0)
    with pytest.raises(ValueError, match="needs an NVIDIA GPU.*use 'xla'"):
        model.apply(params, jnp.ones((1, 4), jnp.int32))
    q = jnp.ones((1, 4, 2, 8))
    with pytest.raises(ValueError, match="cudnn"):
        attention(q, q, q, jnp.ones((1, 4, 4), bool), impl="cudnn")


def test_cudnn_falls_back_to_xla_for_second_order(caplog):
    assert [needs_second_order(k) for k in ("exact", "remat", "mixed", "truncated", "first_order", "tar")] == [
        True, True, True, True, False, False,
    ]  # fmt: skip
    assert not needs_second_order(Estimator("truncated", truncation=0))
    with caplog.at_level(logging.WARNING, logger="jaxtar.models"):
        picks = [resolve_attention_impl("cudnn", Estimator("mixed"), platform="gpu") for _ in range(3)]
        assert resolve_attention_impl("cudnn", Estimator("tar"), platform="gpu") == "cudnn"
        assert resolve_attention_impl("cudnn", "first_order", platform="gpu") == "cudnn"
    assert picks == ["xla"] * 3
    reasons = [r.getMessage() for r in caplog.records if "no second derivative" in r.getMessage()]
    assert len(reasons) == 1 and "'mixed'" in reasons[0] and "'cudnn' -> 'xla'" in reasons[0]  # logged once


def test_with_attention_impl_keeps_params():
    ref, params = create_model(LlamaConfig.tiny(vocab_size=64, num_layers=1), seed=0)
    assert with_attention_impl(ref, "reference") is ref
    xla = with_attention_impl(ref, "cudnn", "exact", platform="gpu")  # second order on a GPU: xla
    assert xla.config.attention_impl == "xla" and ref.config.attention_impl == "reference"
    ids = jnp.arange(8)[None] % 64
    assert _rel(xla.apply(params, ids).logits, ref.apply(params, ids).logits) < 1e-5
