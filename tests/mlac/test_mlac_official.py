"""The official-parity switches of MLAC (`MLACConfig.parity` and its four items) each change exactly what they claim,
checked against hand computations and finite differences on a toy attacker (cheap to compile) and once on a tiny
BERT; the default (jaxtar) path is the engine's own, unchanged."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtar.attacks import Adversary
from jaxtar.attacks.optimizers import make_optimizer
from jaxtar.attacks.unroll import AttackProblem, unroll
from jaxtar.config import ConfigError, MLACConfig, MLACRunConfig, load_mlac_config
from jaxtar.defenses.mlac import (
    InnerOptimizer,
    attack_meta_value_and_grad,
    attacker,
    clip_scalar,
    cross_entropy,
    harmful_ce_lr_grad,
    inner_adversary,
    inner_optimizer,
    mlac_value_and_grad,
    prepare_model,
    ravel_params,
    torch_linear_init,
    with_grad_norm_penalty,
)
from jaxtar.meta import Estimator
from jaxtar.objectives.calibration import calibrated_cross_entropy

ND = 3
SWITCHES = ("inner_lr_objective", "inner_clip", "grad_norm_batches", "head_init")


D = 4  # the toy attacker: harmful logits = x @ w.reshape(D, 2), w the (flat) trainable weights


def _toy_logits(w, batch):
    return batch["x"] @ w.reshape(D, 2)


def _toy_batch(rng, *shape):
    return {"x": jnp.asarray(rng.normal(size=(*shape, D))), "gender": jnp.asarray(rng.integers(0, 2, shape))}


def _toy_problem(cfg, value=None):
    """A full-parameter toy MLAC attacker: attack loss = (masked) CE of the toy logits; tamper = value (default
    minus the plain CE) with the gradient-norm penalty of ``cfg`` (`with_grad_norm_penalty`)."""
    attack = lambda d, w, b: cross_entropy(_toy_logits(w, b), b["gender"], b.get("weight"))
    value = value or (lambda d, w, b: -cross_entropy(_toy_logits(w, b), b["gender"]))
    outer_norm = lambda d, w, b: jnp.linalg.norm(jax.grad(attack, argnums=1)(d, w, b))
    return AttackProblem(lambda d, key: d, attack, with_grad_norm_penalty(value, outer_norm, cfg))


def _toy_data(seed, k):
    rng = np.random.default_rng(seed)
    inner = _toy_batch(rng, k, 6)
    inner["weight"] = jnp.asarray([[1.0] * 5 + [0.0]] * k)  # a drawn batch size of 5, padded to 6
    w0 = jnp.asarray(rng.normal(size=2 * D))
    return w0, inner, _toy_batch(rng, 8), jax.random.key(0)


def _hp(adversary, lr):
    hp = {k: jnp.asarray(v, jnp.float64) for k, v in adversary.hyperparams().items()}
    return {**hp, "learning_rate": jnp.asarray(lr, jnp.float64)}


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _toy_meta(cfg, w0, inner, outer, estimator="exact", value=None):
    """The engine's MLAC meta-gradient (`attack_meta_value_and_grad`) of the toy problem, with ``cfg``'s inner loop
    (`inner_optimizer`) at lr ``cfg.inner_lr``."""
    adversary, opt = inner_optimizer(cfg)
    problem, hp = _toy_problem(cfg, value), _hp(adversary, cfg.inner_lr)
    return attack_meta_value_and_grad(
        problem, adversary, opt, w0, inner, outer, jax.random.key(0), Estimator(estimator), hp
    )


@functools.partial(jax.jit, static_argnums=0)
def _by_hand(cfg, w0, inner, outer):
    """Hand-unrolled attack (plain engine optimiser, clipping through the norm): per k = 0..K the outer plain CE and
    gradient norm; per inner step k < K the official norm sqrt(1e-8 + |g_k|^2) of its gradient on its own batch."""
    adversary = inner_adversary(cfg)
    opt, hp = make_optimizer(adversary), _hp(adversary, cfg.inner_lr)
    attack = lambda w, b: cross_entropy(_toy_logits(w, b), b["gender"], b.get("weight"))
    w, state = w0, opt.init(w0, hp)
    ces, outer_norms, inner_norms = [], [], []
    for k in range(cfg.inner_steps + 1):
        ces.append(attack(w, outer))
        outer_norms.append(jnp.linalg.norm(jax.grad(attack)(w, outer)))
        if k < cfg.inner_steps:
            g = jax.grad(attack)(w, jax.tree.map(lambda x, k=k: x[k], inner))
            inner_norms.append(jnp.sqrt(1e-8 + jnp.sum(g**2)))
            w, state = opt.step(g, state, w, k, hp)
    return jnp.stack(ces), jnp.stack(outer_norms), jnp.stack(inner_norms)


# ----------------------------------------------------------------------------------------------------- config
def test_parity_sets_every_switch_and_each_can_be_set_alone():
    default, official = MLACConfig(), MLACConfig.official()
    assert [default.setting(n) for n in SWITCHES] == ["defence", "through", "outer", "normal"]
    assert [official.setting(n) for n in SWITCHES] == ["harmful_ce", "detached", "inner", "torch"]
    mixed = MLACConfig(parity="official", inner_clip="through", head_init="normal")
    assert [mixed.setting(n) for n in SWITCHES] == ["harmful_ce", "through", "inner", "normal"]
    assert MLACConfig(head_init="torch").setting("inner_clip") == "through"
    # the presets: mlac-official = mlac-paper + parity official + max length 200 (the official tokenizer's)
    paper, off = load_mlac_config("mlac-paper"), load_mlac_config("mlac-official")
    assert off.mlac == dataclasses.replace(paper.mlac, parity="official")
    assert (off.mlac_run.max_length, paper.mlac_run.max_length, off.mlac.grad_norm_penalty) == (200, 128, 0.0)
    # a default run's identity (what --resume compares) has no new keys; an official one records its parity
    assert not {"parity", *SWITCHES} & set(MLACRunConfig().identity()["mlac"])
    assert off.identity()["mlac"]["parity"] == "official"
    with pytest.raises(ConfigError, match="head_init_std only applies to head_init 'normal'"):
        MLACConfig(parity="official", head_init_std=0.1)
    with pytest.raises(ConfigError, match="grad_norm_batches 'inner' .* needs an exact estimator"):
        MLACConfig(grad_norm_penalty=1.0, grad_norm_batches="inner", estimator="truncated", truncation=2)
    MLACConfig(grad_norm_penalty=0.0, grad_norm_batches="inner", estimator="first_order")  # no penalty: no norms
    with pytest.raises(ConfigError, match="inner_clip must be one of"):
        MLACConfig(inner_clip="both")
    with pytest.raises(ConfigError, match="parity must be one of"):
        MLACConfig(parity="torch")


# ------------------------------------------------------------------------------------------------- inner clip
def test_detached_clip_gives_the_same_update_and_the_hand_computed_other_derivative():
    """w1 = w0 - lr * clip * g / ||g|| with g = A w0 (quadratic loss), ||g|| > clip. Through the norm (jaxtar):
    dw1/dw0 = I - lr clip (I - u u^T) A / ||g|| (u = g / ||g||); detached (official): I - lr clip A / ||g||."""
    lr, clip = 0.1, 0.2
    with jax.enable_x64(True):
        a = jnp.asarray([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 3.0]])
        w0, v = jnp.asarray([1.0, -2.0, 0.5]), jnp.asarray([0.3, -1.0, 2.0])
        adv = Adversary("sgd", lr=lr, clip_norm=clip, steps=1)
        through = make_optimizer(adv)
        detached = InnerOptimizer(make_optimizer(dataclasses.replace(adv, clip_norm=None)), clip=clip, track=False)

        def moved(opt, w):
            hp = opt.default_hyperparams()
            return opt.step(a @ w, opt.init(w, hp), w, 0, hp)[0]

        g = a @ w0
        norm = float(jnp.linalg.norm(g))
        assert norm > 5 * clip  # the clip is active
        u = g / norm
        np.testing.assert_allclose(moved(through, w0), w0 - lr * clip * u, rtol=1e-12)
        official = jnp.sqrt(1e-8 + norm**2)  # the official norm has 1e-8 inside the root
        np.testing.assert_allclose(moved(detached, w0), w0 - lr * clip * g / official, rtol=1e-12)
        np.testing.assert_allclose(moved(detached, w0), moved(through, w0), rtol=1e-9)  # the same update
        d_through = jax.grad(lambda w: v @ moved(through, w))(w0)
        d_detached = jax.grad(lambda w: v @ moved(detached, w))(w0)
        eye = jnp.eye(3)
        np.testing.assert_allclose(d_through, v @ (eye - lr * clip * (eye - jnp.outer(u, u)) @ a / norm), rtol=1e-10)
        np.testing.assert_allclose(d_detached, v @ (eye - lr * clip * a / norm), rtol=1e-10)
        assert float(jnp.abs(d_through - d_detached).max()) > 1e-2
        # below the clip both are the plain step
        small = w0 * 0.01
        np.testing.assert_allclose(moved(detached, small), small - lr * (a @ small), rtol=1e-12)
    assert inner_optimizer(MLACConfig())[1] is None  # jaxtar: the engine's own optimiser, untouched
    adversary, opt = inner_optimizer(MLACConfig(inner_clip="detached"))
    assert (adversary.clip_norm, opt.clip, opt.track) == (None, 100.0, False)


# -------------------------------------------------------------------------------------------------- head init
def test_torch_head_init_follows_torchs_nn_linear_rule(tiny_bert):
    torch = pytest.importorskip("torch")
    fan_in, fan_out = 256, 512
    bound = 1 / np.sqrt(fan_in)
    ours = np.asarray(torch_linear_init(jax.random.key(0), (fan_in, fan_out)))
    torch.manual_seed(0)
    theirs = torch.nn.Linear(fan_in, fan_out, bias=False).weight.detach().numpy().T  # torch stores [out, in]
    for w in (ours, theirs):  # U(-b, b): max |w| just below b, std b / sqrt(3), mean 0
        assert bound * 0.999 < np.abs(w).max() <= bound
        assert np.std(w) == pytest.approx(bound / np.sqrt(3), rel=0.01)
        assert abs(np.mean(w)) < 0.01 * bound
    # the attacker's fresh head: torch's rule with fan_in = hidden (8), the default a 0.02-std normal
    cfg = MLACConfig(num_desired=ND, head_init="torch")
    model, params = tiny_bert(cfg)
    flat, key = ravel_params(params), jax.random.key(5)
    head = lambda c: attacker(model, c)[0].attack_init(flat, key)[:16]  # leaves order: head [8, 2] first
    np.testing.assert_array_equal(head(cfg), np.asarray(torch_linear_init(key, (8, 2))).reshape(-1))
    assert float(jnp.abs(head(cfg)).max()) <= 1 / np.sqrt(8)
    np.testing.assert_allclose(head(MLACConfig(num_desired=ND)), 0.02 * jax.random.normal(key, (8, 2)).reshape(-1))
    # the released head prepare_model creates follows the same switch
    _, official = prepare_model(*_bare(model, params), cfg, seed=1)
    np.testing.assert_array_equal(official["classifier"]["kernel"], torch_linear_init(jax.random.key(1), (8, ND + 2)))
    _, default = prepare_model(*_bare(model, params), MLACConfig(num_desired=ND), seed=1)
    assert float(jnp.std(default["classifier"]["kernel"])) < 0.05  # std 0.02 (initializer_range)


def _bare(model, params):
    """The tiny BERT without the MLAC head (so prepare_model makes a new one)."""
    from jaxtar.models import model_for_config

    bare = model_for_config(dataclasses.replace(model.config, num_labels=0))
    return bare, {k: v for k, v in params.items() if k != "classifier"}


# ----------------------------------------------------------------------------------------------------- penalty
def test_inner_batch_penalty_is_the_mean_of_k_inner_norms_and_one_outer_norm():
    """grad_norm_batches "inner" (official): value = -mean_k CE_k + lambda * (sum_{k<K} ||g_k on inner batch k|| +
    ||grad CE(outer) at K||) / (K + 1): K + 1 norms (hand-unrolled). "outer" (jaxtar): the outer batch's norm at every
    k. The inner penalty's meta-gradient is the derivative of that value (central differences) under the exact, remat
    and mixed estimators."""
    lam, k_steps = 0.7, 3
    cfg = MLACConfig(inner_steps=k_steps, inner_lr=0.05, inner_lr_bounds=(1e-6, 0.1), grad_norm_penalty=lam,
                     grad_norm_batches="inner")  # fmt: skip
    with jax.enable_x64(True):
        w0, inner, outer, key = _toy_data(0, k_steps)
        ces, outer_norms, inner_norms = _by_hand(cfg, w0, inner, outer)
        res = {
            b: _toy_meta(dataclasses.replace(cfg, grad_norm_batches=b), w0, inner, outer) for b in ("inner", "outer")
        }
        norms = np.concatenate([inner_norms, outer_norms[-1:]])
        assert norms.shape == (k_steps + 1,)
        np.testing.assert_allclose(res["inner"].value, -ces.mean() + lam * norms.mean(), rtol=1e-12)
        np.testing.assert_allclose(res["outer"].value, -ces.mean() + lam * outer_norms.mean(), rtol=1e-12)
        assert abs(float(res["inner"].value - res["outer"].value)) > 1e-3

        def value(w):  # the inner-penalty value as a plain function of w0, for central differences
            ces, outer_norms, inner_norms = _by_hand(cfg, w, inner, outer)
            return float(-ces.mean() + lam * (inner_norms.sum() + outer_norms[-1]) / (k_steps + 1))

        direction = jnp.asarray(np.random.default_rng(9).normal(size=w0.shape))
        eps = 1e-6
        fd = (value(w0 + eps * direction) - value(w0 - eps * direction)) / (2 * eps)
        mixed = _toy_meta(cfg, w0, inner, outer, estimator="mixed")
        for name, r in (("exact", res["inner"]), ("mixed", mixed)):
            np.testing.assert_allclose(float(r.grads @ direction), fd, rtol=1e-6, err_msg=name)


def test_detached_clip_changes_the_meta_gradient_not_the_value():
    """An active inner clip (norm 0.05): detached and through-the-norm clipping run the same attack (same value,
    1e-8 in the official norm aside), but only clipping through the norm gives the true derivative."""
    cfg = MLACConfig(inner_steps=3, inner_lr=0.05, inner_lr_bounds=(1e-6, 0.1), inner_clip_norm=0.05)
    with jax.enable_x64(True):
        w0, inner, outer, _ = _toy_data(1, 3)
        _, _, inner_norms = _by_hand(cfg, w0, inner, outer)
        assert float(inner_norms.min()) > 2 * cfg.inner_clip_norm  # every step clips
        through = _toy_meta(cfg, w0, inner, outer)
        detached = _toy_meta(dataclasses.replace(cfg, inner_clip="detached"), w0, inner, outer)
        np.testing.assert_allclose(detached.value, through.value, rtol=1e-8)
        direction = jnp.asarray(np.random.default_rng(4).normal(size=w0.shape))
        value = lambda w: float(_toy_meta(cfg, w, inner, outer).value)
        eps = 1e-6
        fd = (value(w0 + eps * direction) - value(w0 - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(float(through.grads @ direction), fd, rtol=1e-6)
    assert np.linalg.norm(detached.grads - through.grads) > 5e-3 * np.linalg.norm(through.grads)


# ------------------------------------------------------------------------------------------------ lr objective
def test_harmful_ce_lr_objective_is_the_clipped_derivative_of_the_mean_plain_harmful_ce():
    """inner_lr_objective "harmful_ce" (official): lr_grad (what the lr's Adam descends) = + d/d lr of the mean plain
    harmful CE over k = 0..K on the outer batch (central differences of the plain `unroll`), clipped as torch's
    clip_grad_norm_; jaxtar's "defence" objective (minus d value / d lr, the calibrated CE) is another number."""
    cfg = MLACConfig(inner_steps=3, inner_lr=0.05, inner_lr_bounds=(1e-6, 0.1), inner_lr_objective="harmful_ce")
    with jax.enable_x64(True):
        w0, inner, outer, key = _toy_data(2, 3)
        adversary = inner_adversary(cfg)
        problem, opt, hp = _toy_problem(cfg), make_optimizer(adversary), _hp(adversary, cfg.inner_lr)
        lr_grad = jax.jit(lambda c: harmful_ce_lr_grad(problem, _toy_logits, opt, c, w0, hp, outer, inner, key),
                          static_argnums=0)  # fmt: skip
        grad, finite = lr_grad(cfg)
        clipped, _ = lr_grad(dataclasses.replace(cfg, outer_clip_norm=1e-4))
        ce = lambda w: cross_entropy(_toy_logits(w, outer), outer["gender"])

        @jax.jit
        def mean_ce(rate):
            res = unroll(problem, w0, adversary, inner, key=key, hyperparams={**hp, "learning_rate": rate},
                         record_every=1, include_initial=True, record_fn=lambda d, w: ce(w))  # fmt: skip
            return jnp.mean(res.records)

        h = 1e-6
        fd = (float(mean_ce(hp["learning_rate"] + h)) - float(mean_ce(hp["learning_rate"] - h))) / (2 * h)
        calibrated = lambda d, w, b: -calibrated_cross_entropy(_toy_logits(w, b), b["gender"], num_steps=100)
        ours = -_toy_meta(cfg, w0, inner, outer, value=calibrated).hyper_grads["learning_rate"]
    assert bool(finite) and abs(fd) > 1e-3 and fd < 10  # the clip (10) is not active here
    np.testing.assert_allclose(float(grad), fd, rtol=1e-6)  # descend: the same sign as d CE / d lr
    np.testing.assert_allclose(float(clipped), np.sign(fd) * 1e-4, rtol=1e-3)
    assert abs(float(ours) - fd) > 0.1 * abs(fd)
    assert float(clip_scalar(jnp.float32(-40.0), 10.0)) == pytest.approx(-10.0, rel=1e-6)


# ---------------------------------------------------------------------------------------------- the whole step
def test_official_parity_on_a_tiny_bert(tiny_bert, random_batch, fast_compile):
    """mlac_value_and_grad with parity "official" (no penalty: its wiring is the toy tests' `with_grad_norm_penalty`):
    the value is the hand-unrolled attack's -mean_k CE_k on the tiny BERT with the torch-initialised fresh head (the
    detached clip runs the same attack), and the lr gradient is the harmful-CE one clipped to outer_clip_norm (1e-6
    here: |lr_grad| = 1e-6, which jaxtar's unclipped objective would not give). The default (jaxtar) config takes
    the engine's own path (`meta_value_and_grad`, bit-identical to the code before the switches)."""
    cfg = MLACConfig.official(inner_steps=2, inner_batch_sizes=(3, 4), num_desired=ND, calibrate=False,
                              outer_clip_norm=1e-6)  # fmt: skip
    model, params = tiny_bert(cfg)
    rng = np.random.default_rng(3)
    outer = random_batch(rng, 5)
    inner = jax.tree.map(lambda v: v.reshape((2, 4) + v.shape[1:]), random_batch(rng, 8))
    inner["weight"] = jnp.asarray([[1.0, 1.0, 1.0, 0.0]] * 2, jnp.float32)
    key, lr = jax.random.key(0), jnp.float32(3e-2)
    metrics, grads, lr_grad = jax.jit(mlac_value_and_grad(model, cfg), compiler_options=fast_compile)(
        params, lr, outer, inner, key
    )
    problem, _ = attacker(model, cfg)
    opt = make_optimizer(inner_adversary(cfg))  # clipping through the norm: the same attack

    @functools.partial(jax.jit, compiler_options=fast_compile)
    def by_hand():
        flat = ravel_params(params)
        hp = {**opt.default_hyperparams(), "learning_rate": lr}
        t = problem.attack_init(flat, key)
        head = t[: 8 * 2]  # the fresh attacker head (first leaf): torch's init, bound 1 / sqrt(hidden 8)
        state, ces = opt.init(t, hp), [problem.attack_loss(flat, t, outer)]
        for k in range(2):
            g = jax.grad(problem.attack_loss, argnums=1)(flat, t, jax.tree.map(lambda x, k=k: x[k], inner))
            t, state = opt.step(g, state, t, k, hp)
            ces.append(problem.attack_loss(flat, t, outer))
        return jnp.stack(ces), head

    ces, head = by_hand()
    np.testing.assert_allclose(head, torch_linear_init(key, (8, 2)).reshape(-1), rtol=1e-6)
    assert abs(float(ces[-1] - ces[0])) > 1e-3  # the attack moved
    np.testing.assert_allclose(metrics["harmful_value"], -ces.mean(), rtol=1e-5)
    assert bool(metrics["finite"]) and float(optax.global_norm(grads)) > 0
    np.testing.assert_allclose(abs(float(lr_grad)), 1e-6, rtol=1e-3)
    assert inner_optimizer(MLACConfig())[1] is None
