"""Cross-entropy and sequence log-probs against PyTorch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxtar.objectives import batch_cross_entropy, masked_mean
from jaxtar.objectives import next_token_cross_entropy as _ce
from jaxtar.objectives import next_token_log_probs as _ntlp
from jaxtar.objectives import sequence_log_probs as _slp

# jitted once: eager op-by-op dispatch compiles every primitive separately and is slower on CPU
next_token_cross_entropy = jax.jit(_ce)
next_token_log_probs = jax.jit(_ntlp)
sequence_log_probs = jax.jit(_slp)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 7, 11)).astype(np.float32) * 3
    labels = rng.integers(0, 11, size=(3, 7)).astype(np.int32)
    mask = np.ones((3, 7), np.int32)
    mask[0, 5:] = 0  # right padding
    mask[1, :3] = 0  # prompt tokens of a prompt/response example
    mask[2, :] = 0
    mask[2, 6] = 1
    return logits, labels, mask


def _torch_ce(logits, labels, mask):
    t_logits = torch.tensor(logits[:, :-1]).reshape(-1, logits.shape[-1])
    t_labels = torch.tensor(labels[:, 1:], dtype=torch.long).clone()
    t_labels[torch.tensor(mask[:, 1:]) == 0] = -100
    return F.cross_entropy(t_logits, t_labels.reshape(-1), ignore_index=-100)


def test_cross_entropy_matches_torch_ignore_index(data):
    logits, labels, mask = data
    got = next_token_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask))
    np.testing.assert_allclose(float(got), _torch_ce(logits, labels, mask).item(), rtol=1e-5)
    unmasked = next_token_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(float(unmasked), _torch_ce(logits, labels, np.ones_like(mask)).item(), rtol=1e-5)
    # position 0 is never a target: changing mask[:, 0] changes nothing
    mask0 = mask.copy()
    mask0[:, 0] = 1 - mask0[:, 0]
    assert float(next_token_cross_entropy(logits, labels, mask0)) == pytest.approx(float(got), rel=1e-6)


def test_cross_entropy_gradient_matches_torch(data):
    logits, labels, mask = data
    g = jax.jit(jax.grad(_ce))(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask))
    t_logits = torch.tensor(logits, requires_grad=True)
    t_labels = torch.tensor(labels[:, 1:], dtype=torch.long).clone()
    t_labels[torch.tensor(mask[:, 1:]) == 0] = -100
    F.cross_entropy(t_logits[:, :-1].reshape(-1, 11), t_labels.reshape(-1), ignore_index=-100).backward()
    np.testing.assert_allclose(np.asarray(g), t_logits.grad.numpy(), atol=1e-6)


def test_sequence_log_probs_match_numpy(data):
    logits, labels, mask = data
    got = np.asarray(sequence_log_probs(logits, labels, mask))
    log_p = torch.log_softmax(torch.tensor(logits, dtype=torch.float64), -1).numpy()
    want = np.zeros(3)
    for b in range(3):
        for t in range(1, 7):
            want[b] += mask[b, t] * log_p[b, t - 1, labels[b, t]]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    per_token = np.asarray(next_token_log_probs(logits, labels))
    assert per_token.shape == (3, 6)
    np.testing.assert_allclose(per_token[1, 2], log_p[1, 2, labels[1, 3]], rtol=1e-5)


def test_all_masked_gives_zero_not_nan():
    logits = jnp.ones((2, 4, 5))
    labels = jnp.zeros((2, 4), jnp.int32)
    mask = jnp.zeros((2, 4), jnp.int32)
    assert float(next_token_cross_entropy(logits, labels, mask)) == 0.0
    g = jax.jit(jax.grad(_ce))(logits, labels, mask)
    assert np.all(np.isfinite(np.asarray(g)))
    assert float(masked_mean(jnp.array([1.0, 5.0]), jnp.array([0, 0]))) == 0.0


def test_batch_cross_entropy_prefers_loss_mask(data):
    logits, labels, mask = data
    batch = {"input_ids": labels, "attention_mask": np.ones_like(mask), "loss_mask": mask}
    bce = jax.jit(batch_cross_entropy)
    assert float(bce(logits, batch)) == pytest.approx(float(next_token_cross_entropy(logits, labels, mask)))
    del batch["loss_mask"]
    assert float(bce(logits, batch)) == pytest.approx(float(next_token_cross_entropy(logits, labels)))


def test_shape_errors():
    with pytest.raises(ValueError, match="labels"):
        _ce(jnp.zeros((2, 4, 5)), jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        _ce(jnp.zeros((2, 4)), jnp.zeros((2, 4), jnp.int32))
