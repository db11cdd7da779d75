"""TAR: one outer step against a plain Python-loop reference (docs/methods.md#tar-outer-loop), the per-step data, the
DPO wiring (on a small, briefly trained base model), and a learning signal on the toy world: post-attack forget MCQ
accuracy (on the shipped toy base model, which knows the MCQ probes).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtar.config import load_config
from jaxtar.defenses import TarData, build_tar_phases, load_model, run_tar, tar_losses, train_suite
from jaxtar.defenses._loop import step_key
from jaxtar.defenses.tar_data import preference_reference
from jaxtar.meta.memory import compiled_peak_bytes

K, S, A = 4, 2, 2  # as in conftest.TAR_TEST_OVERRIDES


@pytest.fixture(scope="module")
def env(tar_overrides):
    config = load_config("toy", tar_overrides)
    assert (config.tar.inner_steps, config.tar.tamper_every, config.tar.adversaries_per_step) == (K, S, A)
    model, params, tokenizer = load_model(config.model)
    phases, data = build_tar_phases(config, model, params, tokenizer)
    return config, model, params, tokenizer, phases[0], data


# ----------------------------------------------------------------------------------------------------------------
# A plain reference of one TAR outer step (docs/methods.md#tar-outer-loop), written from the facts, independent of
# jaxtar.meta, jaxtar.attacks and jaxtar.objectives: Python loops, jax.grad, optax.adamw, optax's schedule-free AdamW.


def _ce(logits, ids, mask):
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), -1)
    nll = -jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
    m = mask[:, 1:].astype(jnp.float32)
    return jnp.sum(nll * m) / jnp.sum(m)


def _neg_entropy(logits, mask):
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    ent = -jnp.sum(jnp.exp(logp) * logp, -1)
    m = mask.astype(jnp.float32)
    return -jnp.sum(ent * m) / jnp.sum(m)


@functools.lru_cache(maxsize=2)
def _reference_fns(model):
    """Jitted per-call pieces of the reference (shared by the reference step and the post-attack evaluation)."""
    fwd = lambda p, b, hidden=False: model.apply(p, b["input_ids"], b["attention_mask"], output_hidden_states=hidden)
    adv_grad = jax.jit(jax.grad(lambda p, b: _ce(fwd(p, b).logits, b["input_ids"], b["loss_mask"])))
    tamper_grad = jax.jit(jax.value_and_grad(lambda p, b: _neg_entropy(fwd(p, b).logits, b["attention_mask"])))

    def retain(p, base, b):
        out, ref = fwd(p, b, True), fwd(base, b, True)
        m = b["attention_mask"].astype(jnp.float32)
        dist = [
            jnp.sum(jnp.sqrt(jnp.sum((h - h0) ** 2, -1)) * m) / jnp.sum(m)
            for h, h0 in zip(out.hidden_states, ref.hidden_states)
        ]
        return _ce(out.logits, b["input_ids"], b["loss_mask"]) + sum(dist) / len(dist)

    def metrics(p, b):  # CE and next-token top-1 accuracy over the real tokens
        logits = fwd(p, b).logits
        m = b["attention_mask"][:, 1:].astype(jnp.float32)
        hit = (jnp.argmax(logits[:, :-1], -1) == b["input_ids"][:, 1:]).astype(jnp.float32)
        return _ce(logits, b["input_ids"], b["attention_mask"]), jnp.sum(hit * m) / jnp.sum(m)

    return adv_grad, tamper_grad, jax.jit(jax.grad(retain)), jax.jit(metrics)


def _adamw(lr):
    return optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)


@jax.jit
def _adamw_step(grads, state, params, lr):
    """One inner AdamW step (the state of ``_adamw(any lr)``)."""
    updates, state = _adamw(lr).update(grads, state, params)
    return optax.apply_updates(params, updates), state


def _reference_step(model, params, base, batches, cfg):
    adv_grad, tamper_grad, retain_grad, _ = _reference_fns(model)
    g_tr_total = jax.tree.map(jnp.zeros_like, params)
    tamper_value = 0.0
    x_tr = {k: jnp.asarray(v) for k, v in batches["tamper"].items()}
    for a in range(A):
        theta = params  # theta0 is kept in `params`: the restore is implicit
        lr = batches["hyperparams"]["learning_rate"][a]
        state = _adamw(lr).init(theta)  # fresh state every outer step
        g_tr = jax.tree.map(jnp.zeros_like, params)
        for k in range(K):
            b = {key: jnp.asarray(v[a, k]) for key, v in batches["adversary"].items()}
            theta, state = _adamw_step(adv_grad(theta, b), state, theta, lr)
            if (k + 1) % S == 0:
                w = np.exp(0.0625 * (k - (K - 1)))
                value, g = tamper_grad(theta, x_tr)
                g_tr = jax.tree.map(lambda acc, gi, w=w: acc + w * gi, g_tr, g)  # first order: grad at theta_k
                tamper_value += w * float(value) / A
        g_tr_total = jax.tree.map(lambda acc, g: acc + g / A, g_tr_total, g_tr)
    r = {k: jnp.asarray(v) for k, v in batches["retain"].items()}
    g = jax.tree.map(lambda gr, gt: 1.0 * gr + 4.0 * gt, retain_grad(params, base, r), g_tr_total)
    assert cfg.warmup_steps == 0  # (warmup would make the first step's lr 0)
    outer = optax.contrib.schedule_free_adamw(cfg.lr, warmup_steps=None, b1=0.9, b2=0.999, eps=1e-8)
    state = outer.init(params)
    updates, state = outer.update(g, state, params)
    return optax.apply_updates(params, updates), state, tamper_value


def _nu(opt_state):
    """Adam's second moment (1 - b2) * g^2 inside the schedule-free state: the outer gradient's magnitude."""
    return next(s.nu for s in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "nu")) if hasattr(s, "nu"))


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _perturbed(base, seed):
    """Start away from the base so the representation term has a gradient."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + 0.01 * rng.standard_normal(x.shape).astype(x.dtype), base)


def _assert_first_updates_agree(params, new, ref_new, ref_nu):
    """The first Adam step is ~ lr * g / (|g| + eps): compare where |g| is not at the float32 noise floor."""
    delta, ref_delta = _flat(new) - _flat(params), _flat(ref_new) - _flat(params)
    clear = ref_nu > 1e-6 * np.max(ref_nu)
    assert clear.mean() > 0.5
    np.testing.assert_allclose(delta[clear], ref_delta[clear], rtol=1e-3, atol=1e-9)
    return ref_delta


def test_outer_step_matches_python_loop_reference(env):
    config, model, base, _, phase, data = env
    step = next(i for i in range(50) if len({a.data for a in data.adversaries(i)}) == 2)  # forget + retain->forget
    assert {a.switch_step for a in data.adversaries(step)} - {None}, "a retain->forget adversary has a switch point"
    params = _perturbed(base, 0)
    batches = data.batches(step)
    new, state, metrics = phase.step_fn(params, phase.init_opt_state(params), batches, step_key(0, step), base)
    ref_new, ref_state, ref_tamper = _reference_step(model, params, base, batches, config.tar)

    nu, ref_nu = _flat(_nu(state)), _flat(_nu(ref_state))
    assert np.max(np.abs(nu - ref_nu)) / np.max(ref_nu) < 1e-4  # (1 - b2) g^2: the gradient's magnitude
    _assert_first_updates_agree(params, new, ref_new, ref_nu)
    assert float(metrics["tamper_value"]) == pytest.approx(ref_tamper, rel=1e-5)
    assert float(metrics["representation"]) > 0 and float(metrics["finite_fraction"]) == 1.0


def test_adversaries_one_at_a_time_equal_one_vmap(env):
    """`adversary_chunk_size: 1` runs the A = 2 adversaries one after another: the same outer step as one vmap."""
    config, model, base, tokenizer, phase, data = env
    one_by_one = dataclasses.replace(config, tar=dataclasses.replace(config.tar, adversary_chunk_size=1))
    chunked = build_tar_phases(one_by_one, model, base, tokenizer)[0][0]
    params = _perturbed(base, 1)
    batches, key = data.batches(3), step_key(0, 3)
    new, state, metrics = phase.step_fn(params, phase.init_opt_state(params), batches, key, base)
    new_c, state_c, metrics_c = chunked.step_fn(params, chunked.init_opt_state(params), batches, key, base)
    nu, nu_c = _flat(_nu(state)), _flat(_nu(state_c))  # (1 - b2) g^2
    np.testing.assert_allclose(nu_c, nu, rtol=1e-4, atol=1e-6 * np.max(nu))
    delta = _assert_first_updates_agree(params, new_c, new, nu)
    assert np.max(np.abs(delta)) > 1e-5  # the step moved the weights
    for name in ("tamper_value", "grad_norm_tamper", "attack_final"):
        assert float(metrics_c[name]) == pytest.approx(float(metrics[name]), rel=1e-5), name
    args = (params, phase.init_opt_state(params), batches, key, base)
    pairs = (("all", phase), ("one", chunked))
    peak = {n: compiled_peak_bytes(ph.step_fn.jitted.lower(*args).compile()) for n, ph in pairs}
    assert peak["one"] < 0.9 * peak["all"], peak  # one adversary's attack state live at a time


def test_batches_are_a_function_of_the_step(env):
    config, _, _, tokenizer, _, data = env
    again = TarData(config, tokenizer, train_suite(config.tar))
    for step in (0, 7):
        a, b = data.batches(step), again.batches(step)
        for key in a["adversary"]:
            np.testing.assert_array_equal(a["adversary"][key], b["adversary"][key])
        np.testing.assert_array_equal(a["tamper"]["input_ids"], b["tamper"]["input_ids"])
        assert a["adversary"]["input_ids"].shape == (A, K, 8, 48)
        lrs = a["hyperparams"]["learning_rate"]
        assert np.all(np.isclose(lrs, 1e-3) | np.isclose(lrs, 3e-3))
    # retain->forget: rows before the switch point are retain text, after it forget text
    step = next(i for i in range(100) if any(a.switches and 0 < a.switch_step < K for a in data.adversaries(i)))
    slot = next(j for j, a in enumerate(data.adversaries(step)) if a.switches)
    m = data.adversaries(step)[slot].switch_step
    rows = data.batches(step)["adversary"]["input_ids"][slot]
    retain_rows = {tuple(r) for r in data.streams["retain"].take(0, data.streams["retain"].num_rows)["input_ids"]}
    forget_rows = {tuple(r) for r in data.streams["forget"].take(0, data.streams["forget"].num_rows)["input_ids"]}
    assert all(tuple(r) in retain_rows for r in rows[:m].reshape(-1, 48))
    assert all(tuple(r) in forget_rows for r in rows[m:].reshape(-1, 48))
    # the tamper batches come from held-out forget text the adversaries never train on
    tamper_rows = {tuple(r) for r in data.streams["tamper"].take(0, data.streams["tamper"].num_rows)["input_ids"]}
    assert tamper_rows and not tamper_rows & forget_rows


def test_dpo_tamper_loss_uses_reference_log_probs_of_the_start_model(env, tar_overrides):
    config, model, params, tokenizer, _, _ = env
    cfg = load_config("toy", {**tar_overrides, "tar.tamper_loss": "dpo",
                              "tar.setting": "refusal", "data.harmful": "toy:harmful",
                              "data.preferences": "toy:preferences", "data.limit": 16})  # fmt: skip
    data = TarData(cfg, tokenizer, train_suite(cfg.tar), preference_reference(model, params, batch_size=5))
    rows = data.streams["tamper"].take(0, 16).rows
    ids, mask, loss_mask = rows["chosen_input_ids"][:2], rows["chosen_attention_mask"][:2], rows["chosen_loss_mask"][:2]
    logp = jax.nn.log_softmax(model.apply(params, ids, mask).logits[:, :-1], -1)
    want = np.sum(np.take_along_axis(np.asarray(logp), ids[:, 1:, None], -1)[..., 0] * loss_mask[:, 1:], -1)
    np.testing.assert_allclose(rows["reference_chosen_logps"][:2], want, rtol=1e-5)
    tamper = jax.jit(tar_losses(model, cfg.tar)["tamper"])
    assert float(tamper(params, rows, None)) == pytest.approx(np.log(2.0), abs=1e-5)  # policy == reference
    # the refusal adversary fine-tunes on the harmful reply only
    adv = data.batches(0)["adversary"]
    assert adv["loss_mask"].sum() < adv["attention_mask"].sum()


# ----------------------------------------------------------------------------------------------------------------
# Learning signal: post-attack toy MCQ accuracy (4 choices, chance 25 %) of the TAR model vs the undefended base, on
# the training adversaries. The test's small base model above stays at chance on the MCQ probes, so this uses the
# shipped toy base model (2 layers, d=128; 100 % / 97.5 % forget / retain MCQ) and the paper's pipeline: the
# random-mapping safeguard, then TAR (K = 4, s = 2 as above, A = 1).

RM_STEPS, TAR_STEPS, LR = 30, 16, 2e-3  # both phases at twice the toy preset's learning rate (a shorter run)
EVAL_STEPS = 2 * K  # attacks run twice as long as the K inner steps TAR trained against


def _post_attack_mcq(model, params, tokenizer, data, suite, world):
    """Forget MCQ accuracy after each training adversary (a plain AdamW loop on fresh forget / retain->forget data)."""
    from jaxtar.toy import mcq_letter_accuracy

    adv_grad = _reference_fns(model)[0]
    out, bsz = [], 8
    for adv in suite:
        pos = 10_000 * EVAL_STEPS * bsz
        rows = data.streams["forget"].take(pos, EVAL_STEPS * bsz).reshape_leading(EVAL_STEPS, bsz)
        if adv.switches:  # retain for the first 2/3 of the attack (the Beta(6, 3) mean), then forget
            pre = data.streams["retain"].take(pos, EVAL_STEPS * bsz).reshape_leading(EVAL_STEPS, bsz)
            m = round(EVAL_STEPS * 2 / 3)
            rows = {k: np.concatenate([pre[k][:m], rows[k][m:]]) for k in rows}
        theta, lr = params, np.float32(adv.lr)
        state = _adamw(lr).init(theta)
        for k in range(EVAL_STEPS):
            theta, state = _adamw_step(adv_grad(theta, {key: v[k] for key, v in rows.items()}), state, theta, lr)
        out.append(mcq_letter_accuracy(model, theta, tokenizer, world.forget_mcq))
    return np.asarray(out)


def test_tar_lowers_post_attack_forget_mcq_accuracy_on_the_toy_world(tar_overrides, tmp_path):
    """Measured: post-attack forget MCQ base 0.96, random mapping alone 0.94, random mapping + TAR 0.57 (per
    adversary 0.50-0.63; with A = 2 adversaries per step 0.49 at 1.5x the TAR cost); retain MCQ 0.975 -> 0.93.
    Without the random-mapping warm start, 24 TAR steps (lr 1e-3) left the post-attack accuracy at 0.96 (the warm
    start is part of the method, docs/methods.md#random-mapping)."""
    from jaxtar.defenses import run_random_mapping
    from jaxtar.toy import mcq_letter_accuracy, toy_world

    overrides = {k: v for k, v in tar_overrides.items() if k != "model.path"}  # K, s, batches as above
    config = load_config("toy", {**overrides, "random_mapping.steps": RM_STEPS, "random_mapping.lr": LR,
                                 "tar.outer_steps": TAR_STEPS, "tar.lr": LR,
                                 "tar.adversaries_per_step": 1})  # fmt: skip
    model, base, tokenizer = load_model(config.model)  # the shipped toy base model
    world = toy_world(0)
    _, data = build_tar_phases(config, model, base, tokenizer)
    suite = train_suite(config.tar)
    run = lambda name: dataclasses.replace(config.run, output_dir=str(tmp_path / name))
    in_dir = lambda name: dataclasses.replace(config, run=run(name))
    rm = run_random_mapping(in_dir("rm"), model=model, params=base, tokenizer=tokenizer)
    tar = run_tar(in_dir("tar"), model=model, params=rm.params, tokenizer=tokenizer)
    assert tar.steps == TAR_STEPS and not tar.interrupted

    before = _post_attack_mcq(model, base, tokenizer, data, suite, world)
    safeguard = _post_attack_mcq(model, rm.params, tokenizer, data, suite, world)
    after = _post_attack_mcq(model, tar.params, tokenizer, data, suite, world)
    print(f"post-attack forget MCQ: base {before.round(3)} random mapping {safeguard.round(3)} TAR {after.round(3)}")
    assert before.mean() > 0.85  # the attacks leave the undefended base's knowledge in place
    assert after.mean() < before.mean() - 0.2  # TAR: a clear margin below the base, on every adversary too
    assert np.all(after < before - 0.05)
    assert after.mean() < safeguard.mean() - 0.15  # ... that the random-mapping warm start alone does not give
    retain = [mcq_letter_accuracy(model, p, tokenizer, world.retain_mcq) for p in (base, tar.params)]
    assert retain[1] > retain[0] - 0.1  # the benign domain is kept
