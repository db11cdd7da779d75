"""Compile once per shape: a meta-gradient step and TAR's outer step are traced once however often they run with new
values (their outputs fed back in: same shapes, dtypes and weak types), guarded by `chex.assert_max_traces`."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtar.attacks import Adversary
from jaxtar.meta import Estimator, TamperSchedule, meta_value_and_grad


def test_meta_step_traces_once_per_shape(hybrid, make_hybrid_data):
    adversary = Adversary("adamw", lr=0.05, steps=4, eps_root=1e-8)

    @chex.assert_max_traces(n=1)
    def meta_step(params, batches, tamper, key, hyper):
        schedule, estimator = TamperSchedule(every=2), Estimator("exact")
        res = meta_value_and_grad(hybrid, params, batches, tamper, adversary=adversary, key=key, schedule=schedule,
                                  estimator=estimator, hyperparams=hyper)  # fmt: skip
        return jax.tree.map(lambda p, g: p - 0.1 * g, params, res.grads), res.value

    step = jax.jit(meta_step)
    hyper = lambda lr: {
        **{k: jnp.float32(v) for k, v in adversary.hyperparams().items()},
        "learning_rate": jnp.float32(lr),
    }
    params, _, _ = make_hybrid_data(4)
    values = []
    for i in range(3):  # new batches, key and learning rate each call; params fed back
        _, batches, tamper = make_hybrid_data(4, seed=i + 1)
        new, value = step(params, batches, tamper, jax.random.key(i), hyper(0.05 * (i + 1)))
        chex.assert_trees_all_equal_shapes_and_dtypes(new, params)
        chex.assert_tree_all_finite(new)
        params = new
        values.append(float(value))
    assert step._cache_size() == 1 and len(set(values)) == 3  # one executable, three different problems
    _, short, tamper = make_hybrid_data(2)  # K = 2: a new shape is a new trace, which the guard refuses
    with pytest.raises(AssertionError, match="traced > 1 times"):
        step(params, short, tamper, jax.random.key(0), hyper(0.05))


K, A, BATCH, T, V = 2, 2, 2, 8, 64


def _tar_inputs(template, seed):
    rng = np.random.default_rng(seed)

    def rows(*lead):
        ids = rng.integers(0, V, (*lead, BATCH, T)).astype(np.int32)
        attention = np.ones_like(ids)
        attention[..., 1, T - 2 :] = 0  # the second row is right-padded
        return {"input_ids": ids, "attention_mask": attention, "loss_mask": attention.copy()}

    hyper = {k: np.full(A, v, np.float32) for k, v in template.hyperparams().items()}
    hyper["learning_rate"] = rng.choice([1e-2, 3e-2], A).astype(np.float32)
    return {"adversary": rows(A, K), "tamper": rows(), "retain": rows(), "hyperparams": hyper}


def test_tar_outer_step_traces_once(monkeypatch):
    """Three TAR outer steps (two vmapped adversaries, new batches and learning rates each step, params and the
    schedule-free optimiser state fed back): one trace of the step function, one compiled executable."""
    from jaxtar.config import TarConfig
    from jaxtar.defenses import _loop, make_tar_step, tar, train_suite
    from jaxtar.models import LlamaConfig, create_model

    guarded = []

    def jit_once(step, *args, **kwargs):
        guarded.append(chex.assert_max_traces(step, n=1))
        return _loop.jit_step(guarded[-1], *args, **kwargs)

    monkeypatch.setattr(tar, "jit_step", jit_once)
    cfg = LlamaConfig.tiny(vocab_size=V, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                           num_kv_heads=1)  # fmt: skip
    model, base = create_model(cfg, seed=0)
    config = TarConfig(inner_steps=K, tamper_every=1, adversaries_per_step=A, warmup_steps=0, lr=1e-3,
                       setting="cyber", adversary_lrs=(1e-2,), estimator="tar")  # fmt: skip
    template = train_suite(config)[0]
    step, optimizer = make_tar_step(model, config, template)
    assert len(guarded) == 1
    params, opt_state = base, optimizer.init(base)
    losses = []
    for i in range(3):
        new, new_state, metrics = step(params, opt_state, _tar_inputs(template, i), jax.random.key(i), base)
        chex.assert_trees_all_equal_shapes_and_dtypes((new, new_state), (params, opt_state))
        params, opt_state = new, new_state
        losses.append(float(metrics["loss"]))
    assert step.jitted._cache_size() == 1
    assert np.all(np.isfinite(losses)) and len(set(losses)) == 3
    assert float(jnp.max(jnp.abs(params["lm_head"]["kernel"] - base["lm_head"]["kernel"]))) > 0
