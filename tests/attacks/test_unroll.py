"""The unroll against plain Python loops: full-parameter, masked step counts, records, two-level grouping, LoRA."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtar.attacks import Adversary, AttackProblem, full_parameter_problem, model_attack_problem, unroll
from jaxtar.attacks.adversary import LoraSpec
from jaxtar.attacks.unroll import Carry, Run, plan_runs, run_plan


def _loss(w, batch):
    x, y = batch
    return jnp.mean((jnp.tanh(x @ w) - y) ** 2)


@pytest.fixture(scope="module")
def data():
    k = jax.random.split(jax.random.key(0), 3)
    w0 = jax.random.normal(k[0], (3, 2))
    batches = (jax.random.normal(k[1], (5, 4, 3)), jax.random.normal(k[2], (5, 4, 2)))
    return w0, batches


def test_plan_runs():
    assert plan_runs(0, 64, 4) == (Run(16, 4, True),)
    assert plan_runs(0, 10, 4) == (Run(2, 4, True), Run(1, 2, False))
    assert plan_runs(62, 64, 4) == (Run(1, 2, True),)
    assert plan_runs(0, 5, None) == (Run(1, 5, False),)
    assert plan_runs(3, 9, 2) == (Run(1, 1, True), Run(2, 2, True), Run(1, 1, False))
    assert plan_runs(0, 10, (7, 1, 2, 3, 12)) == (Run(3, 1, True), Run(1, 4, True), Run(1, 3, False))  # chosen steps
    assert plan_runs(0, 8, (4, 8)) == plan_runs(0, 8, 4) == plan_runs(0, 8, np.int64(4))
    assert plan_runs(0, 5, 0) == plan_runs(0, 5, ()) == plan_runs(0, 5, None)


def test_records_at_chosen_steps_are_differentiable(data):
    """Weights recorded after steps 1 and 4 equal separate 1- and 4-step attacks, and jax.grad through the unroll
    (momentum SGD, float64) matches central finite differences."""
    w0, batches = data
    adv = Adversary("sgd_momentum", lr=0.3, momentum=0.8, steps=5)
    prob = full_parameter_problem(_loss)
    run = lambda w, b, **kw: unroll(prob, w, adv, b, key=jax.random.key(0), **kw)
    res = run(w0, batches, record_at=(4, 1), record_fn=lambda d, w: w)
    for i, steps in enumerate((1, 4)):
        np.testing.assert_allclose(res.records[i], run(w0, jax.tree.map(lambda x, s=steps: x[:s], batches)).trainable,
                                   rtol=1e-6)  # fmt: skip
    with jax.enable_x64(True):
        w64, b64 = jnp.asarray(w0, jnp.float64), jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), batches)
        value = lambda w: jnp.sum(jnp.sin(run(w, b64, record_at=(2, 5), record_fn=lambda d, t: t).records))
        grad, v, h = jax.grad(value)(w64), jnp.asarray(np.random.default_rng(0).normal(size=w0.shape)), 1e-6
        fd = (value(w64 + h * v) - value(w64 - h * v)) / (2 * h)
        np.testing.assert_allclose(float(jnp.sum(grad * v)), float(fd), rtol=1e-7)
    with pytest.raises(ValueError, match="1..5"):
        run(w0, batches, record_at=(0, 2), record_fn=lambda d, w: w)
    with pytest.raises(ValueError, match="not both"):
        run(w0, batches, record_every=2, record_at=(2,), record_fn=lambda d, w: w)


def test_unroll_matches_python_loop_with_records(data):
    w0, batches = data
    adv = Adversary("sgd_momentum", lr=0.3, momentum=0.8, steps=5)
    prob = full_parameter_problem(_loss)
    metric = lambda d, w: jnp.sum(w**2)
    res = jax.jit(
        lambda w: unroll(
            prob, w, adv, batches, key=jax.random.key(0), record_every=2, include_initial=True, record_fn=metric
        )  # fmt: skip
    )(w0)
    tx, w = optax.sgd(0.3, momentum=0.8), w0
    state, losses, recs = tx.init(w0), [], [float(jnp.sum(w0**2))]
    for k in range(5):
        batch = jax.tree.map(lambda x, k=k: x[k], batches)
        loss, g = jax.value_and_grad(_loss)(w, batch)
        u, state = tx.update(g, state, w)
        w = optax.apply_updates(w, u)
        losses.append(float(loss))
        if (k + 1) % 2 == 0:
            recs.append(float(jnp.sum(w**2)))
    np.testing.assert_allclose(res.trainable, w, rtol=1e-6)
    np.testing.assert_allclose(res.losses, losses, rtol=1e-6)
    np.testing.assert_allclose(res.records, recs, rtol=1e-6)


def test_masked_steps_equal_a_shorter_attack(data):
    w0, batches = data
    adv = Adversary("adamw", lr=0.1, weight_decay=0.01, steps=5)
    prob = full_parameter_problem(_loss)
    f = jax.jit(lambda w, b, n: unroll(prob, w, adv, b, key=jax.random.key(0), active_steps=n))
    masked = f(w0, batches, jnp.int32(3))
    short = f(w0, jax.tree.map(lambda x: x[:3], batches), None)
    np.testing.assert_allclose(masked.trainable, short.trainable, rtol=1e-6)
    np.testing.assert_allclose(masked.losses[:3], short.losses, rtol=1e-6)
    np.testing.assert_allclose(masked.losses[3:], 0.0)


def test_two_level_grouping_changes_nothing_forward(data):
    w0, batches = data
    prob = full_parameter_problem(_loss)
    opt_step = lambda c, b: (c._replace(trainable=c.trainable - 0.1 * jax.grad(_loss)(c.trainable, b), step=c.step + 1),
                             _loss(c.trainable, b))  # fmt: skip
    record = lambda c, w: (c._replace(acc=c.acc + w * jnp.sum(c.trainable)), jnp.sum(c.trainable))
    carry = Carry(w0, None, jnp.int32(0), jnp.zeros(()))
    runs = (Run(5, 1, True),)
    outs = [run_plan(opt_step, record, carry, runs, batches, jnp.arange(5.0), group=g) for g in (1, 2)]
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert prob.attack_init(w0, None) is w0


def test_lora_attack_on_tiny_llama_matches_manual_loop():
    from jaxtar.models import LlamaConfig, create_model

    model, params = create_model(LlamaConfig.tiny(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1,
                                                  num_heads=2, num_kv_heads=1), seed=0)  # fmt: skip

    def ce(p, ids, lora):
        logp = jax.nn.log_softmax(model.apply(p, ids, lora=lora).logits[:, :-1])
        return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))

    adv = Adversary(
        "sgd", lr=0.5, steps=2, lora=LoraSpec(rank=2, alpha=4.0, dropout=0.0, targets=("q_proj", "up_proj"))
    )
    prob = model_attack_problem(adv, ce, model=model)
    assert isinstance(prob, AttackProblem)
    ids = jax.random.randint(jax.random.key(1), (2, 2, 6), 0, 32)
    key = jax.random.key(2)
    res = jax.jit(lambda p: unroll(prob, p, adv, ids, key=key))(params)
    lora = prob.attack_init(params, key)
    assert set(lora.weights) == {"q_proj", "up_proj"} and lora.scale == 2.0
    grad = jax.jit(jax.grad(lambda lo, x: ce(params, x, lo)))
    for k in range(2):
        lora = jax.tree.map(lambda a, g: a - 0.5 * g, lora, grad(lora, ids[k]))
    for a, b in zip(jax.tree.leaves(res.trainable), jax.tree.leaves(lora)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(res.trainable.weights["q_proj"]["b"]).max()) > 0  # the adapters did train
    with pytest.raises(ValueError, match="needs the model"):
        model_attack_problem(adv, ce)
