"""The objectives on a real (tiny) Llama: TAR's first step, at the base model, has finite gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtar.models import LlamaConfig, create_model
from jaxtar.objectives import (
    batch_cross_entropy,
    negative_entropy_loss,
    random_mapping_loss_from_ids,
    representation_distance_loss,
)


def test_tar_losses_at_the_base_model_have_finite_gradients():
    model, base = create_model(LlamaConfig.tiny(num_layers=1), seed=0)
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 256, (2, 8)), jnp.int32)
    mask = jnp.array([[1] * 8, [1] * 5 + [0] * 3], jnp.int32)
    batch = {"input_ids": ids, "attention_mask": mask, "loss_mask": mask}
    base_hidden = model.apply(base, ids, mask, output_hidden_states=True).hidden_states
    assert len(base_hidden) == 2  # embeddings + 1 layer

    def losses(params):
        out = model.apply(params, ids, mask, output_hidden_states=True)
        parts = jnp.stack([
            batch_cross_entropy(out.logits, batch),
            negative_entropy_loss(out.logits, mask),
            representation_distance_loss(out.hidden_states, base_hidden, mask),
            random_mapping_loss_from_ids(out.hidden_states, ids, jax.random.key(0), mask),
        ])  # fmt: skip
        smoothed = representation_distance_loss(out.hidden_states, base_hidden, mask, eps=1e-3)
        return jnp.stack([jnp.sum(parts), smoothed]), parts

    jac, parts = jax.jit(jax.jacrev(losses, has_aux=True))(base)
    ce, neg_entropy, distance, mapping = (float(v) for v in parts)
    assert ce == pytest.approx(np.log(256), rel=0.1) and -np.log(256) <= neg_entropy < 0
    assert distance < 1e-5 and 0.5 < mapping < 1.0  # distance ~0, not 0: the base forward is compiled apart
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(jac)]
    assert all(np.all(np.isfinite(x)) for x in leaves) and max(np.abs(x[0]).max() for x in leaves) > 1e-3
    assert max(np.abs(x[1]).max() for x in leaves) < 1e-3  # eps smoothing: no gradient from float noise
