"""AC, desired-only, joint, the calibrated harmful value and the gradient-norm penalty compute what they say (K = 0,
so no inner loop: evaluated eagerly against direct formulas), and bad configurations fail with clear errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtar.config import MLACConfig, load_mlac_config
from jaxtar.defenses.mlac import mlac_value_and_grad
from jaxtar.defenses.mlac_train import make_validator
from jaxtar.objectives.calibration import calibrated_cross_entropy

ND = 3


def _parts(model, params, batch):
    """Direct formulas: pooled output and the desired / harmful CE of the released head."""
    pooled = model.apply(params, batch["input_ids"], batch["attention_mask"]).pooled_output
    z = pooled @ params["classifier"]["kernel"]
    ce = lambda logits, y: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    return pooled, ce(z[:, :ND], batch["profession"]), ce(z[:, ND:], batch["gender"])


def test_ac_is_desired_ce_minus_adversary_ce_with_the_adversary_trained_by_gradient_reversal(tiny_bert, random_batch):
    cfg = MLACConfig.ac(num_desired=ND)
    assert (cfg.inner_steps, cfg.head, cfg.calibrate, cfg.learn_inner_lr) == (0, "learned", False, False)
    model, params = tiny_bert(cfg)
    batch = random_batch(np.random.default_rng(1), 6)
    metrics, grads, lr_grad = jax.jit(mlac_value_and_grad(model, cfg))(
        params, jnp.float32(1e-3), batch, None, jax.random.key(0)
    )
    _, des, harm = jax.jit(_parts, static_argnums=0)(model, params, batch)
    np.testing.assert_allclose(metrics["desired_ce"], des, rtol=1e-5)
    np.testing.assert_allclose(metrics["harmful_value"], -harm, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], des - harm, rtol=1e-5)
    assert float(lr_grad) == 0.0
    g_des, g_harm = jax.jit(lambda p: (jax.grad(lambda q: _parts(model, q, batch)[1])(p),
                                       jax.grad(lambda q: _parts(model, q, batch)[2])(p)))(params)  # fmt: skip
    kernel = np.asarray(grads["classifier"]["kernel"])
    # desired columns: descend the desired CE; adversary columns: descend the harmful CE (the adversary learns)
    np.testing.assert_allclose(kernel[:, :ND], g_des["classifier"]["kernel"][:, :ND], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(kernel[:, ND:], g_harm["classifier"]["kernel"][:, ND:], rtol=1e-4, atol=1e-7)
    assert np.abs(kernel[:, ND:]).max() > 1e-4
    # the encoder: descend desired CE minus harmful CE (it censors)
    trunk_ref = jax.tree.map(lambda a, b: a - b, g_des["pooler"], g_harm["pooler"])
    np.testing.assert_allclose(grads["pooler"]["kernel"], trunk_ref["kernel"], rtol=1e-4, atol=1e-7)


def test_desired_only_and_joint_variants(tiny_bert, random_batch):
    batch = random_batch(np.random.default_rng(2), 6)
    cfg = MLACConfig.desired_only(num_desired=ND)
    model, params = tiny_bert(cfg)
    _, des, harm = jax.jit(_parts, static_argnums=0)(model, params, batch)
    metrics, grads, _ = jax.jit(mlac_value_and_grad(model, cfg))(
        params, jnp.float32(1e-3), batch, None, jax.random.key(0)
    )
    np.testing.assert_allclose(metrics["loss"], des, rtol=1e-5)
    assert float(metrics["harmful_value"]) == 0.0
    assert float(np.abs(grads["classifier"]["kernel"][:, ND:]).max()) == 0.0  # harmful columns untouched
    joint = dataclasses.replace(cfg, variant="joint", harmful_weight=2.0)
    f = jax.jit(mlac_value_and_grad(model, joint))
    metrics, grads, _ = f(params, jnp.float32(1e-3), batch, None, jax.random.key(0))
    np.testing.assert_allclose(metrics["loss"], des + 2.0 * harm, rtol=1e-5)
    ref = jax.jit(jax.grad(lambda p: _parts(model, p, batch)[1] + 2.0 * _parts(model, p, batch)[2]))(params)
    np.testing.assert_allclose(grads["classifier"]["kernel"], ref["classifier"]["kernel"], rtol=1e-4, atol=1e-7)


def test_validation_scores_each_variant_by_its_own_loss(tiny_bert, random_batch):
    """desired: desired CE; joint: desired CE + harmful_weight * the released harmful head's CE (its accuracy too)."""
    batch = random_batch(np.random.default_rng(4), 8)
    cfg = MLACConfig.desired_only(num_desired=ND)
    model, params = tiny_bert(cfg)
    pooled, des, harm = jax.jit(_parts, static_argnums=0)(model, params, batch)
    out = make_validator(model, cfg)(params, jnp.float32(1e-3), batch)
    np.testing.assert_allclose(out["val_score"], des, rtol=1e-5)
    assert "val_released_harmful_acc" not in out
    joint = make_validator(model, dataclasses.replace(cfg, variant="joint", harmful_weight=2.5))
    out = joint(params, jnp.float32(1e-3), batch)
    np.testing.assert_allclose(out["val_released_harmful_ce"], harm, rtol=1e-5)
    np.testing.assert_allclose(out["val_score"], des + 2.5 * harm, rtol=1e-5)
    acc = np.mean(np.argmax(pooled @ params["classifier"]["kernel"][:, ND:], -1) == batch["gender"])
    assert float(out["val_released_harmful_acc"]) == pytest.approx(acc)


def test_fresh_head_calibrated_value_and_gradient_norm_penalty(tiny_bert, random_batch):
    """K = 0 with a fresh attacker head: value = -calibrated CE of pooled @ head (+ lambda * ||grad of the attacker's
    plain CE w.r.t. encoder and head||); the fresh head is std 0.02 from the key, as ``attack_init`` draws it."""
    batch = random_batch(np.random.default_rng(3), 8)
    key = jax.random.key(7)
    penalty = 0.5
    cfg = MLACConfig(inner_steps=0, num_desired=ND, head="fresh", calibrate=True, calibration_method="implicit",
                     calibration_steps=200, grad_norm_penalty=penalty, learn_inner_lr=False)  # fmt: skip
    model, params = tiny_bert(cfg)
    metrics, _, _ = jax.jit(mlac_value_and_grad(model, cfg))(params, jnp.float32(1e-3), batch, None, key)
    head = 0.02 * jax.random.normal(key, (8, 2))
    trunk = {k: v for k, v in params.items() if k != "classifier"}

    def plain(t, h):
        pooled = model.apply({**t, "classifier": params["classifier"]}, batch["input_ids"]).pooled_output
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(pooled @ h, batch["gender"]))

    @jax.jit
    def reference(t, h):
        pooled = model.apply({**t, "classifier": params["classifier"]}, batch["input_ids"]).pooled_output
        calibrated = calibrated_cross_entropy(pooled @ h, batch["gender"], num_steps=200)
        gt, gh = jax.grad(plain, argnums=(0, 1))(t, h)
        return calibrated, plain(t, h), jnp.sqrt(optax.global_norm(gt) ** 2 + jnp.sum(gh**2))

    calibrated, plain_ce, norm = reference(trunk, head)
    np.testing.assert_allclose(metrics["harmful_value"], -calibrated + penalty * norm, rtol=1e-4)
    assert float(calibrated) <= min(np.log(2), float(plain_ce)) + 1e-6  # calibrated CE <= log C and <= plain CE
    assert float(norm) > 1e-3  # the penalty term is not negligible


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"variant": "censor"}, "variant must be one of"),
        ({"head": "random"}, "head must be one of"),
        ({"inner_lr": 1.0}, "must lie in inner_lr_bounds"),
        ({"inner_steps": -1}, "inner_steps must be an int >= 0"),
        ({"inner_batch_sizes": ()}, "inner_batch_sizes must be positive ints"),
        ({"estimator": "magic"}, "estimator must be one of"),
        ({"estimator": "truncated"}, "truncation must be set exactly"),
        ({"calibration_method": "lbfgs"}, "calibration_method must be one of"),
        ({"num_harmful": 1}, "must be >= 2"),
        ({"outer_lr": 0.0}, "outer_lr must be > 0"),
    ],
)
def test_mlac_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLACConfig(**kwargs)


def test_presets_and_overrides():
    paper = load_mlac_config("mlac-paper")  # the headline arm: no gradient-norm penalty
    assert (paper.mlac.inner_steps, paper.mlac.grad_norm_penalty, paper.mlac.outer_lr, paper.mlac.outer_batch_size,
            paper.mlac.outer_clip_norm, paper.mlac.inner_clip_norm, paper.mlac.inner_batch_sizes,
            paper.mlac_run.model) == (16, 0.0, 1e-5, 20, 10.0, 100.0, (12, 24, 48), "bert-tiny")  # fmt: skip
    assert (paper.mlac.inner_lr, paper.mlac.inner_lr_lr, paper.mlac.inner_lr_bounds) == (3e-4, 1e-4, (1e-6, 1e-2))
    ablation = load_mlac_config("mlac-paper-gradpenalty")  # the penalty ablation's arm, otherwise the same
    assert ablation.mlac == dataclasses.replace(paper.mlac, grad_norm_penalty=1.0)
    assert ablation.mlac_run == paper.mlac_run
    cfg = load_mlac_config("mlac-offline", {"mlac.outer_steps": "7", "mlac_run.warmup_steps": 0})
    assert (cfg.mlac.outer_steps, cfg.mlac_run.warmup_steps, cfg.preset) == (7, 0, "mlac-offline")
    with pytest.raises(ValueError, match="did you mean 'mlac.outer_steps'"):
        load_mlac_config("mlac-offline", {"mlac.outer_step": 3})
    with pytest.raises(ValueError, match="unknown MLAC preset 'mlac-ofline'; .*did you mean 'mlac-offline'"):
        load_mlac_config("mlac-ofline")
    with pytest.raises(ValueError, match="must be an integer"):
        load_mlac_config("mlac-offline", {"mlac.outer_steps": "many"})
