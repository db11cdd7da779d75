"""Chunked LM losses (``*_from_hidden(..., chunk=c)``): the unchunked values and gradients of every order, masks
and ragged chunks handled, much less memory in XLA's own allocation, and the memory planner counting one chunk.

Tolerances (float32, measured on CPU): values equal to rtol 1e-6 (the per-row arithmetic is the unchunked one; only
the head matmul's summation order may differ: measured differences 0); first-order gradients to 1e-6 relative to the
largest entry (measured <= 1.4e-7); second-order (Hessian-vector products, a meta-gradient through an SGD step) to
1e-5 (measured <= 9e-7).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtar.meta import Estimator
from jaxtar.meta.memory import Workload, logits_bytes, predict_peak_bytes
from jaxtar.meta.spec import EXACT_POLICY, checkpoint_policy
from jaxtar.models import LlamaConfig, create_model
from jaxtar.objectives import (
    batch_cross_entropy,
    batch_cross_entropy_from_hidden,
    dpo_loss_from_hidden,
    dpo_loss_from_logits,
    head_logits,
    negative_entropy_loss,
    negative_entropy_loss_from_hidden,
    next_token_cross_entropy_from_hidden,
)

B, T, D, V = 3, 7, 16, 50
CHUNKS = (1, 5, 1000)  # one token; 5 divides neither B*(T-1) = 18 nor B*T = 21; more than all tokens
GRAD_RTOL, SECOND_ORDER_RTOL = 1e-6, 1e-5


def _rel(a, b) -> float:
    flat = lambda t: np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(t)])
    return float(np.max(np.abs(flat(a) - flat(b))) / np.max(np.abs(flat(b))))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.standard_normal((B, T, D)), jnp.float32)
    head = jnp.asarray(rng.standard_normal((D, V)) / 2, jnp.float32)
    ids = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
    # full row, right-padded row, left-padded row with a prompt
    mask = jnp.array([[1] * 7, [1] * 4 + [0] * 3, [0, 0, 0, 1, 1, 1, 1]], jnp.int32)
    pref = {"chosen_input_ids": ids, "chosen_loss_mask": mask, "rejected_input_ids": ids[::-1],
            "rejected_loss_mask": mask[::-1], "reference_chosen_logps": jnp.asarray([-90.0, -40.0, -60.0]),
            "reference_rejected_logps": jnp.asarray([-80.0, -70.0, -50.0])}  # fmt: skip
    return dict(hidden=hidden, head=head, ids=ids, mask=mask, pref=pref)


def _losses(d):
    """Scalar losses of (hidden, head) for a chunk size: CE, negative entropy, DPO (sequence log-prob sums)."""
    ids, mask, pref = d["ids"], d["mask"], d["pref"]
    return {
        "ce": lambda c: lambda h, w: next_token_cross_entropy_from_hidden(h, w, ids, mask, chunk=c),
        "entropy": lambda c: lambda h, w: negative_entropy_loss_from_hidden(h, w, mask, chunk=c),
        "dpo": lambda c: lambda h, w: dpo_loss_from_hidden(h, 0.5 * h[::-1], w, pref, 0.1, chunk=c).loss,
    }


@pytest.mark.parametrize("name", ["ce", "entropy", "dpo"])
def test_chunked_equals_unchunked_values_gradients_and_hvps(data, name):
    make = _losses(data)[name]
    h, w = data["hidden"], data["head"]
    tangent = (0.3 * jnp.cos(h), 0.2 * jnp.sin(w))

    def value_grad_hvp(c):
        f = make(c)
        value, grads = jax.value_and_grad(f, (0, 1))(h, w)
        hvp = jax.jvp(lambda a, b: jax.grad(f, (0, 1))(a, b), (h, w), tangent)[1]  # forward-over-reverse
        return value, grads, hvp

    value0, grads0, hvp0 = jax.jit(lambda: value_grad_hvp(None))()
    assert np.isfinite(float(value0)) and all(float(jnp.max(jnp.abs(g))) > 1e-4 for g in (*grads0, *hvp0))
    for c in CHUNKS:
        value, grads, hvp = jax.jit(lambda c=c: value_grad_hvp(c))()
        np.testing.assert_allclose(float(value), float(value0), rtol=1e-6)
        assert _rel(grads, grads0) < GRAD_RTOL, (c, _rel(grads, grads0))
        assert _rel(hvp, hvp0) < SECOND_ORDER_RTOL, (c, _rel(hvp, hvp0))


def test_masked_positions_get_no_gradient_and_the_logits_versions_agree(data):
    h, w, ids, mask = data["hidden"], data["head"], data["ids"], data["mask"]
    batch = {"input_ids": ids, "loss_mask": mask}

    @jax.jit
    def run():
        logits = head_logits(h, w)
        return {
            "ce_grad": jax.grad(lambda h_: next_token_cross_entropy_from_hidden(h_, w, ids, mask, chunk=5))(h),
            "entropy_grad": jax.grad(lambda h_: negative_entropy_loss_from_hidden(h_, w, mask, chunk=4))(h),
            "ce": (batch_cross_entropy_from_hidden(h, w, batch, chunk=4), batch_cross_entropy(logits, batch)),
            "entropy": [(negative_entropy_loss_from_hidden(h, w, mask, unmasked=u, chunk=4),
                         negative_entropy_loss(logits, mask, unmasked=u)) for u in (False, True)],
            "dpo": (dpo_loss_from_hidden(h, h[::-1], w, data["pref"], chunk=2).chosen_rewards,
                    dpo_loss_from_logits(logits, logits[::-1], data["pref"]).chosen_rewards),
        }  # fmt: skip

    out = run()
    # position t predicts token t+1: its hidden state counts iff mask[t+1]; the last position never does
    counted = np.concatenate([np.asarray(mask[:, 1:]), np.zeros((B, 1), np.int32)], axis=1).astype(bool)
    ce_grad = np.asarray(out["ce_grad"])
    assert np.all(ce_grad[~counted] == 0.0) and np.all(np.abs(ce_grad[counted]).sum(-1) > 0)
    entropy_grad = np.asarray(out["entropy_grad"])
    real = np.asarray(mask, bool)
    assert np.all(entropy_grad[~real] == 0.0) and np.all(np.abs(entropy_grad[real]).sum(-1) > 0)
    for chunked, unchunked in (out["ce"], *out["entropy"], out["dpo"]):  # the numbers of the logits losses
        np.testing.assert_allclose(chunked, unchunked, rtol=1e-6)


def test_all_masked_gives_zero_and_finite_gradients(data):
    h, w, ids = data["hidden"], data["head"], data["ids"]
    zero = jnp.zeros((B, T), jnp.int32)
    f = lambda h_, w_: (
        next_token_cross_entropy_from_hidden(h_, w_, ids, zero, chunk=4)
        + (negative_entropy_loss_from_hidden(h_, w_, zero, chunk=4))
    )
    value, grads = jax.jit(jax.value_and_grad(f, (0, 1)))(h, w)
    assert float(value) == 0.0 and all(np.all(np.asarray(g) == 0.0) for g in grads)


@pytest.mark.parametrize("chunk", [0, -3, 2.5, True])
def test_bad_chunk_sizes_are_refused(data, chunk):
    with pytest.raises(ValueError, match="chunk must be None"):
        next_token_cross_entropy_from_hidden(data["hidden"], data["head"], data["ids"], chunk=chunk)


def test_head_shape_is_checked(data):
    with pytest.raises(ValueError, match=r"LM head must be \[D, V\]"):
        negative_entropy_loss_from_hidden(data["hidden"], data["head"].T, chunk=4)


def test_meta_gradient_through_sgd_steps_is_unchanged(data):
    """Reverse over reverse: two SGD steps on the chunked CE (on the hidden states and the head both), then the
    chunked entropy; its gradient with respect to the starting point equals the unchunked one."""
    h, w, ids, mask = data["hidden"], data["head"], data["ids"], data["mask"]

    def meta(c):
        def objective(h_, w_):
            for _ in range(2):
                gh, gw = jax.grad(lambda a, b: next_token_cross_entropy_from_hidden(a, b, ids, mask, chunk=c), (0, 1))(
                    h_, w_
                )
                h_, w_ = h_ - 3.0 * gh, w_ - 3.0 * gw
            return negative_entropy_loss_from_hidden(h_, w_, mask, chunk=c)

        return jax.value_and_grad(objective, (0, 1))(h, w)

    (v0, g0), (v1, g1) = jax.jit(lambda: (meta(None), meta(5)))()
    g_first = jax.jit(jax.grad(_losses(data)["entropy"](None), (0, 1)))(h, w)
    assert _rel(g0, g_first) > 1e-2  # the steps matter: this is not the plain entropy gradient
    np.testing.assert_allclose(float(v1), float(v0), rtol=1e-6)
    assert _rel(g1, g0) < SECOND_ORDER_RTOL, _rel(g1, g0)


def test_llama_hidden_state_losses_equal_the_logits_losses():
    """With `model.lm_head` (here the tied embedding, transposed) and `last_hidden_state`, the chunked CE and
    entropy of a Llama have the values and parameter gradients of the losses of `model.apply(...).logits`."""
    cfg = LlamaConfig.tiny(num_layers=1, hidden_size=32, intermediate_size=64, tie_word_embeddings=True)
    model, params = create_model(cfg, seed=0)
    ids = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 6)), jnp.int32)
    mask = jnp.array([[1] * 6, [1] * 4 + [0] * 2], jnp.int32)
    batch = {"input_ids": ids, "attention_mask": mask}

    def loss(p, c):
        out = model.apply(p, ids, mask)
        if c == "logits":
            return batch_cross_entropy(out.logits, batch) + negative_entropy_loss(out.logits, mask)
        head = model.lm_head(p)
        return batch_cross_entropy_from_hidden(out.last_hidden_state, head, batch, chunk=c) + (
            negative_entropy_loss_from_hidden(out.last_hidden_state, head, mask, chunk=c)
        )

    results = jax.jit(lambda p: [jax.value_and_grad(loss)(p, c) for c in ("logits", None, 5)])(params)
    v0, g0 = results[0]
    assert float(jnp.max(jnp.abs(g0["embed"]["embedding"]))) > 1e-4
    for c, (value, grads) in zip((None, 5), results[1:]):
        np.testing.assert_allclose(float(value), float(v0), rtol=1e-6)
        assert _rel(grads, g0) < GRAD_RTOL, (c, _rel(grads, g0))


# ------------------------------------------------------------------------------------------------------- memory
MEM_N, MEM_D, MEM_V, MEM_CHUNK = 512, 32, 16384, 64  # full logits 32 MiB, a chunk's 4 MiB


def _temp_bytes(fn, *args) -> int:
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_chunking_cuts_xla_temp_memory_first_and_second_order():
    """XLA's temp allocation (CPU) for a large vocabulary: the gradient of the CE, and the meta-gradient of the
    entropy after 4 SGD steps on the CE with each step under the ``exact`` estimator's checkpoint policy (which
    would keep every chunk's logits dot were it a plain 2-D dot). Measured 128 / 16 MiB and 357 / 30 MiB."""
    hidden = jnp.full((4, MEM_N // 4, MEM_D), 0.01)
    head = jnp.full((MEM_D, MEM_V), 0.01)
    ids = jnp.zeros((4, MEM_N // 4), jnp.int32)
    first, meta = {}, {}
    for c in (None, MEM_CHUNK):
        ce = lambda h, w, c=c: next_token_cross_entropy_from_hidden(h, w, ids, chunk=c)
        step = jax.checkpoint(
            lambda h, w, ce=ce: w - 0.1 * jax.grad(ce, 1)(h, w), policy=checkpoint_policy(EXACT_POLICY)
        )

        def unrolled(h, w, c=c, step=step):
            for _ in range(4):
                w = step(h, w)
            return negative_entropy_loss_from_hidden(h, w, chunk=c)

        first[c] = _temp_bytes(jax.grad(ce, (0, 1)), hidden, head)
        meta[c] = _temp_bytes(jax.grad(unrolled, (0, 1)), hidden, head)
    full = logits_bytes(MEM_V, MEM_N)
    assert first[None] >= 1.5 * full and meta[None] >= 8 * full, (first, meta, full)  # unchunked: logits everywhere
    assert first[MEM_CHUNK] < 0.2 * first[None], first
    assert meta[MEM_CHUNK] < 0.15 * meta[None], meta


def test_planner_counts_one_chunk_of_logits():
    cfg = LlamaConfig(vocab_size=128_256, hidden_size=4096, intermediate_size=14_336, num_layers=32, num_heads=32,
                      num_kv_heads=8)  # Llama-3-8B  # fmt: skip
    b, t, chunk = 8, 1024, 1024
    full = Workload.for_llama(cfg, batch_size=b, seq_len=t, steps=16, records=4)
    chunked = Workload.for_llama(cfg, batch_size=b, seq_len=t, steps=16, records=4, loss_chunk=chunk)
    assert logits_bytes(cfg.vocab_size, b * t, chunk) * b == logits_bytes(cfg.vocab_size, b * t)
    shrink = 3 * (logits_bytes(cfg.vocab_size, b * t) - logits_bytes(cfg.vocab_size, b * t, chunk))
    assert full.step_activation_bytes - chunked.step_activation_bytes == shrink == 3 * 7 * 4 * cfg.vocab_size * chunk
    assert full.step_dot_bytes - chunked.step_dot_bytes == 4 * b * t * (cfg.vocab_size + cfg.hidden_size)
    assert full.tamper_dot_bytes - chunked.tamper_dot_bytes == 4 * b * t * cfg.vocab_size
    for kind in ("exact", "remat", "mixed", "first_order", "tar"):
        saved = predict_peak_bytes(full, Estimator(kind)).total - predict_peak_bytes(chunked, Estimator(kind)).total
        assert saved >= shrink, (kind, saved / 2**30)
    # a chunk as large as the batch changes nothing in the activations
    same = Workload.for_llama(cfg, batch_size=b, seq_len=t, steps=16, records=4, loss_chunk=b * t)
    assert same.step_activation_bytes == full.step_activation_bytes
    with pytest.raises(ValueError, match="loss chunk"):
        logits_bytes(cfg.vocab_size, 10, chunk=0)
