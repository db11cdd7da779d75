"""Sigmoid DPO against a direct PyTorch computation (TRL's formula)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxtar.objectives import dpo_loss, dpo_loss_from_logits, reference_log_probs, sequence_log_probs


def _torch_dpo(pc, pr, rc, rr, beta):
    logits = (pc - pr) - (rc - rr)
    loss = -F.logsigmoid(beta * logits).mean()
    acc = (beta * (pc - rc) > beta * (pr - rr)).float().mean()
    return loss, acc


def test_dpo_matches_torch_and_gradient():
    rng = np.random.default_rng(2)
    pc, pr, rc, rr = (rng.normal(size=6).astype(np.float32) * 5 - 20 for _ in range(4))
    out = jax.jit(dpo_loss)(jnp.asarray(pc), jnp.asarray(pr), jnp.asarray(rc), jnp.asarray(rr), 0.1)
    t_pc = torch.tensor(pc, requires_grad=True)
    t_pr = torch.tensor(pr, requires_grad=True)
    loss, acc = _torch_dpo(t_pc, t_pr, torch.tensor(rc), torch.tensor(rr), 0.1)
    loss.backward()
    np.testing.assert_allclose(float(out.loss), loss.item(), rtol=1e-5)
    assert float(out.reward_accuracy) == pytest.approx(acc.item())
    np.testing.assert_allclose(np.asarray(out.chosen_rewards), 0.1 * (pc - rc), rtol=1e-5)
    g_pc, g_pr, g_rc = jax.jit(
        jax.grad(lambda a, b, c: dpo_loss(a, b, c, jnp.asarray(rr), 0.1).loss, argnums=(0, 1, 2))
    )(jnp.asarray(pc), jnp.asarray(pr), jnp.asarray(rc))
    np.testing.assert_allclose(np.asarray(g_pc), t_pc.grad.numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g_pr), t_pr.grad.numpy(), rtol=1e-5)
    assert np.all(np.asarray(g_rc) == 0.0)  # the reference is frozen


def test_dpo_from_logits_and_cached_reference():
    rng = np.random.default_rng(3)
    b, t, v = 3, 6, 7
    ids_c = rng.integers(0, v, (b, t)).astype(np.int32)
    ids_r = rng.integers(0, v, (b, t)).astype(np.int32)
    mask_c = np.array([[0, 0, 1, 1, 1, 0]] * b, np.int32)
    mask_r = np.array([[0, 0, 1, 1, 0, 0]] * b, np.int32)
    w_ref = jnp.asarray(rng.normal(size=(v, v)).astype(np.float32))
    w_pol = w_ref + 0.3 * jnp.asarray(rng.normal(size=(v, v)).astype(np.float32))

    def logits_fn(w):
        return lambda ids, attn: jax.nn.one_hot(ids, v) @ w

    ref_c = reference_log_probs(logits_fn(w_ref), ids_c, np.ones_like(ids_c), mask_c, batch_size=2)
    ref_r = reference_log_probs(logits_fn(w_ref), ids_r, np.ones_like(ids_r), mask_r, batch_size=2)
    np.testing.assert_allclose(
        ref_c, np.asarray(sequence_log_probs(logits_fn(w_ref)(ids_c, None), ids_c, mask_c)), rtol=1e-6
    )
    batch = {
        "chosen_input_ids": ids_c,
        "chosen_loss_mask": mask_c,
        "rejected_input_ids": ids_r,
        "rejected_loss_mask": mask_r,
        "reference_chosen_logps": ref_c,
        "reference_rejected_logps": ref_r,
    }
    out = dpo_loss_from_logits(logits_fn(w_pol)(ids_c, None), logits_fn(w_pol)(ids_r, None), batch, beta=0.5)
    pc = torch.log_softmax(torch.tensor(np.asarray(logits_fn(w_pol)(ids_c, None))), -1)
    pr = torch.log_softmax(torch.tensor(np.asarray(logits_fn(w_pol)(ids_r, None))), -1)

    def seq(lp, ids, m):
        tok = lp[:, :-1].gather(-1, torch.tensor(ids[:, 1:], dtype=torch.long)[..., None])[..., 0]
        return (tok * torch.tensor(m[:, 1:])).sum(-1)

    loss, _ = _torch_dpo(seq(pc, ids_c, mask_c), seq(pr, ids_r, mask_r), torch.tensor(ref_c), torch.tensor(ref_r), 0.5)
    np.testing.assert_allclose(float(out.loss), loss.item(), rtol=1e-5)
    # at the reference itself the loss is log 2
    same = dpo_loss_from_logits(logits_fn(w_ref)(ids_c, None), logits_fn(w_ref)(ids_r, None), batch)
    assert float(same.loss) == pytest.approx(np.log(2.0), rel=1e-5)


def test_dpo_validation():
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), beta=0.0)
    with pytest.raises(ValueError, match="same shape"):
        dpo_loss(jnp.zeros(2), jnp.zeros(3), jnp.zeros(2), jnp.zeros(2))
