"""Shared tiny problems for the meta-gradient tests (session-scoped so compiled functions are reused)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from jaxtar.attacks.unroll import AttackProblem

D_IN, D_HID, D_OUT = 4, 6, 3


def _mlp(w1, b1, w2, x):
    return jnp.tanh(x @ w1 + b1) @ w2


def hybrid_problem() -> AttackProblem:
    """Exercises every gradient path at once.

    The attacker trains `w1` (initialised from the defended `w1`, like a full-parameter / MLAC trunk) and a fresh
    additive adapter `a` on `w2` (like LoRA); the defended `w2` and `b1` stay frozen but enter the attack loss and
    the tamper loss directly.
    """

    def attack_init(d, key):
        return {"w1": d["w1"], "a": 0.3 * jax.random.normal(key, (D_HID, D_OUT), d["w2"].dtype)}

    def predict(d, t, x):
        return _mlp(t["w1"], d["b1"], d["w2"] + t["a"], x)

    def attack_loss(d, t, batch):
        x, y = batch
        return jnp.mean((predict(d, t, x) - y) ** 2)

    def tamper_loss(d, t, batch):
        x, y = batch
        return jnp.mean(jnp.sin(predict(d, t, x)) * y) + 0.1 * jnp.sum(d["b1"] ** 2)

    return AttackProblem(attack_init, attack_loss, tamper_loss)


def hybrid_data(num_steps: int, seed: int = 0, dtype=jnp.float32, lead: tuple[int, ...] = ()):
    """Defended params, per-step batches [*lead, K, ...] (feature 0 is always 0: exact zero gradients), tamper."""
    k = jax.random.split(jax.random.key(seed), 7)
    params = {
        "w1": jax.random.normal(k[0], (D_IN, D_HID), dtype),
        "b1": 0.1 * jax.random.normal(k[1], (D_HID,), dtype),
        "w2": jax.random.normal(k[2], (D_HID, D_OUT), dtype) / 2,
    }
    x = jax.random.normal(k[3], (*lead, num_steps, 5, D_IN), dtype).at[..., 0].set(0.0)
    y = jax.random.normal(k[4], (*lead, num_steps, 5, D_OUT), dtype)
    tamper = (jax.random.normal(k[5], (5, D_IN), dtype), jax.random.normal(k[6], (5, D_OUT), dtype))
    return params, (x, y), tamper


@pytest.fixture(scope="session")
def hybrid():
    return hybrid_problem()


@pytest.fixture(scope="session")
def make_hybrid_data():
    return hybrid_data


def _assert_same_meta_result(res, ref, rtol: float) -> None:
    """`res` is finite, has `ref`'s value (1e-12) and its grads and hyper-gradients to `rtol` (relative to the
    largest entry)."""
    import numpy as np

    flat = lambda t: np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(t)])
    rel = lambda a, b: float(np.max(np.abs(flat(a) - flat(b))) / np.max(np.abs(flat(b))))
    assert bool(res.aux.is_finite)
    np.testing.assert_allclose(res.value, ref.value, rtol=1e-12)
    assert rel(res.grads, ref.grads) < rtol
    assert rel(res.hyper_grads, ref.hyper_grads) < rtol


@pytest.fixture(scope="session")
def assert_same_meta_result():
    return _assert_same_meta_result


# ----------------------------------------------------------------------------------------------- tiny Llama
LLAMA_K, LLAMA_B, LLAMA_T = 4, 2, 8


def _llama_losses(model):
    def attack_ce(params, ids, lora):  # next-token cross-entropy
        logp = jax.nn.log_softmax(model.apply(params, ids, lora=lora).logits[:, :-1])
        return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))

    def neg_entropy(params, ids, lora):  # TAR's knowledge-restriction tamper loss (no padding here)
        logp = jax.nn.log_softmax(model.apply(params, ids, lora=lora).logits)
        return jnp.mean(jnp.sum(jnp.exp(logp) * logp, axis=-1))

    return attack_ce, neg_entropy


@pytest.fixture(scope="session")
def llama():
    """A tiny Llama (2 layers, d=32, GQA 4/2), its losses, K per-step batches and a held-out tamper batch."""
    from jaxtar.models import LlamaConfig, create_model

    cfg = LlamaConfig.tiny(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                           num_kv_heads=2)  # fmt: skip
    model, params = create_model(cfg, seed=0)
    ids = jax.random.randint(jax.random.key(11), (LLAMA_K, LLAMA_B, LLAMA_T), 0, cfg.vocab_size)
    tamper_ids = jax.random.randint(jax.random.key(12), (LLAMA_B, LLAMA_T), 0, cfg.vocab_size)
    attack_ce, neg_entropy = _llama_losses(model)
    return dict(config=cfg, model=model, params=params, ids=ids, tamper_ids=tamper_ids, attack_ce=attack_ce,
                neg_entropy=neg_entropy, K=LLAMA_K, B=LLAMA_B, T=LLAMA_T)  # fmt: skip


def _compiled_meta(llama, adversary, schedule, estimator):
    from jaxtar.attacks.unroll import model_attack_problem
    from jaxtar.meta import meta_value_and_grad

    problem = model_attack_problem(adversary, llama["attack_ce"], llama["neg_entropy"], model=llama["model"])
    f = lambda p: meta_value_and_grad(problem, p, llama["ids"], llama["tamper_ids"], adversary=adversary,
                                      key=jax.random.key(0), schedule=schedule, estimator=estimator)  # fmt: skip
    compiled = jax.jit(f).lower(llama["params"]).compile()
    return compiled, compiled(llama["params"])


@pytest.fixture(scope="session")
def llama_exact(llama):
    """Exact meta-gradient through K Adam steps (records every step, exponential weights): (compiled, result)."""
    from jaxtar.attacks.adversary import Adversary
    from jaxtar.meta import Estimator, TamperSchedule

    # eps = 1e-3: with eps = 1e-8, entries whose gradient is ~1e-8 make Adam's derivative ~1/eps, and float32
    # rounding differences between any two implementations then move the meta-gradient by ~2% (measured: 2.5e-2
    # with eps 1e-8 vs 8e-6 with eps 1e-3). The implementation is the same; the problem is better conditioned.
    adv = Adversary("adam", lr=1e-2, b1=0.9, b2=0.999, eps=1e-3, eps_root=1e-16, steps=LLAMA_K)
    sched = TamperSchedule(every=1, weighting="exponential", rate=0.5)
    compiled, result = _compiled_meta(llama, adv, sched, Estimator("exact"))
    return dict(adversary=adv, schedule=sched, compiled=compiled, result=result)


@pytest.fixture(scope="session")
def llama_tar(llama):
    """TAR's estimator: AdamW(0.9, 0.999, 1e-8, wd 0.01), records every s = 2 steps, TAR's weights."""
    from jaxtar.attacks.adversary import Adversary
    from jaxtar.meta import Estimator, TamperSchedule

    adv = Adversary("adamw", lr=1e-2, weight_decay=0.01, eps_root=0.0, steps=LLAMA_K)
    sched = TamperSchedule.tar(every=2, rate=0.0625)
    compiled, result = _compiled_meta(llama, adv, sched, Estimator("tar"))
    return dict(adversary=adv, schedule=sched, compiled=compiled, result=result)
