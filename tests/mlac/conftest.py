"""Shared tiny MLAC set-up (fixtures): a 1-layer BERT factory and random labelled batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtar.defenses.mlac import prepare_model
from jaxtar.models import model_for_config
from jaxtar.models.bert import BertConfig

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _tiny_bert(cfg, dtype=jnp.float32, seed=0):
    config = BertConfig.tiny(vocab_size=32, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2,
                             max_position_embeddings=8)  # fmt: skip
    model = model_for_config(config)
    model, params = prepare_model(model, model.init(seed), cfg, seed=seed)
    return model, jax.tree.map(lambda x: x.astype(dtype), params)


def _random_batch(rng, n, t=6, num_desired=3):
    return {
        "input_ids": jnp.asarray(rng.integers(5, 32, (n, t)), jnp.int32),
        "attention_mask": jnp.asarray(np.ones((n, t)), jnp.int32),
        "profession": jnp.asarray(rng.integers(0, num_desired, n), jnp.int32),
        "gender": jnp.asarray(rng.integers(0, 2, n), jnp.int32),
    }


@pytest.fixture
def tiny_bert():
    """``tiny_bert(cfg, dtype, seed) -> (model, params)``: a 1-layer d=8 BERT with the MLAC head layout."""
    return _tiny_bert


@pytest.fixture
def random_batch():
    """``random_batch(rng, n) -> batch``: random tokens with random desired (3 classes) / harmful labels."""
    return _random_batch


@pytest.fixture
def fast_compile():
    """XLA options that roughly halve CPU compile time (tests only)."""
    return FAST_COMPILE
