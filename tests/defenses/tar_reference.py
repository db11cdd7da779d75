"""Small reference helpers shared by the TAR tests (written here, independent of jaxtar.objectives)."""

import jax
import jax.numpy as jnp
import numpy as np


def next_token_ce(logits, ids, mask):
    """Shifted next-token cross-entropy over the target mask."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), -1)
    nll = -jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
    m = mask[:, 1:].astype(jnp.float32)
    return jnp.sum(nll * m) / jnp.sum(m)


def flat64(tree):
    """Every leaf of ``tree`` raveled into one float64 numpy vector."""
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def rel_err(a, b):
    """||a - b|| / ||b||."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))
