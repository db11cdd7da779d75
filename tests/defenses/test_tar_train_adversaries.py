"""TAR's train-time adversary variants and tamper losses against plain Python-loop references (issue 21): the
CE-ascent tamper loss with warmup + cosine adversaries, and LoRA adversaries (`tar.adversary_lora_rank`).

The references are written from the definitions, independent of jaxtar.meta, jaxtar.attacks and the model's LoRA
path: optax.adamw with a hand-written cosine multiplier, adapters merged into the kernels by hand (W + s * a @ b,
exact without dropout), first-order TAR: the tamper gradient at each recorded attacked point, weighted
exp(0.0625 * (k - (K - 1))).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tar_reference import flat64, next_token_ce

from jaxtar.config import load_config
from jaxtar.defenses import build_tar_phases, load_model, train_suite
from jaxtar.defenses._loop import step_key
from jaxtar.errors import ConfigError
from jaxtar.models.lora import LoraConfig, init_lora

K, S, A = 4, 2, 2  # as in conftest.TAR_TEST_OVERRIDES
STEP = 3


def _neg_entropy(logits, mask):
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    m = mask.astype(jnp.float32)
    return jnp.sum(jnp.sum(jnp.exp(logp) * logp, -1) * m) / jnp.sum(m)


def _forward(model, params, b):
    return model.apply(params, b["input_ids"], b["attention_mask"]).logits


def _merged(params, lora, scale):
    """The defended weights with the adapters folded in by hand."""
    layers = dict(params["layers"])
    for name, ab in lora.items():
        delta = scale * jnp.einsum("lir,lro->lio", ab["a"], ab["b"])
        layers[name] = {**layers[name], "kernel": layers[name]["kernel"] + delta}
    return {**params, "layers": layers}


def _cosine(count):
    """warmup_cosine with K // 8 = 0 warmup steps: 1 -> 0 over K steps."""
    return 0.5 * (1.0 + jnp.cos(math.pi * jnp.minimum(count, K) / K))


def _reference(model, params, batches, tamper, *, lora_rank=None, cosine=False, init_key=None):
    """(tamper value, first-order tamper gradient), both averaged over the A adversaries."""
    x_tr = {k: jnp.asarray(v) for k, v in batches["tamper"].items()}
    scale = 2.0 if lora_rank else None  # alpha = 2 x rank

    def model_of(d, t):  # the attacked model: the trained weights, or the defended ones with trained adapters
        return t if lora_rank is None else _merged(d, t, scale)

    attack_grad = jax.jit(
        jax.grad(lambda t, d, b: next_token_ce(_forward(model, model_of(d, t), b), b["input_ids"], b["loss_mask"]))
    )
    tamper_vg = jax.jit(jax.value_and_grad(lambda d, t: tamper(_forward(model, model_of(d, t), x_tr), x_tr)))
    total_value, total_grad = 0.0, jax.tree.map(jnp.zeros_like, params)
    for a in range(A):
        lr = float(batches["hyperparams"]["learning_rate"][a])
        schedule = (lambda c, lr=lr: lr * _cosine(c)) if cosine else lr
        opt = optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
        if lora_rank is None:
            trainable = params
        else:
            cfg = LoraConfig(rank=lora_rank, alpha=2.0 * lora_rank, dropout=0.0)
            trainable = init_lora(init_key, model, params, cfg).weights
        state = opt.init(trainable)
        for k in range(K):
            b = {key: jnp.asarray(v[a, k]) for key, v in batches["adversary"].items()}
            defended = params if lora_rank is not None else trainable
            updates, state = opt.update(attack_grad(trainable, defended, b), state, trainable)
            trainable = optax.apply_updates(trainable, updates)
            if (k + 1) % S == 0:
                w = np.exp(0.0625 * (k - (K - 1)))
                if lora_rank is None:  # first order: the gradient at the attacked weights
                    value, g = jax.value_and_grad(lambda d: tamper(_forward(model, d, x_tr), x_tr))(trainable)
                else:  # the adapters are held fixed; the gradient is w.r.t. the defended (base) weights
                    value, g = tamper_vg(params, trainable)
                total_value += w * float(value) / A
                total_grad = jax.tree.map(lambda acc, gi, w=w: acc + w * gi / A, total_grad, g)
    return total_value, total_grad


def _one_step(tar_overrides, overrides):
    config = load_config("toy", {**tar_overrides, **overrides})
    model, params, tokenizer = load_model(config.model)
    phases, data = build_tar_phases(config, model, params, tokenizer)
    phase = phases[0]
    batches = data.batches(STEP)
    _, _, metrics = phase.step_fn(params, phase.init_opt_state(params), batches, step_key(0, STEP), params)
    return config, model, params, data, batches, metrics


def test_ce_ascent_tamper_loss_with_warmup_cosine_adversaries_matches_reference(tar_overrides):
    config, model, params, data, batches, metrics = _one_step(
        tar_overrides, {"tar.tamper_loss": "ce_ascent", "tar.adversary_schedule": "warmup_cosine"}
    )
    assert all(a.schedule.kind == "warmup_cosine" and a.name.endswith("-cosine") for a in data.suite)
    ce_ascent = lambda logits, b: -next_token_ce(logits, b["input_ids"], b["loss_mask"])
    value, grad = _reference(model, params, batches, ce_ascent, cosine=True)
    assert value < 0  # minus a cross-entropy
    assert float(metrics["tamper_value"]) == pytest.approx(value, rel=1e-5)
    assert float(metrics["grad_norm_tamper"]) == pytest.approx(np.linalg.norm(flat64(grad)), rel=1e-4)
    # the cosine schedule matters: the same step with a constant schedule gives another tamper value
    constant, _ = _reference(model, params, batches, ce_ascent, cosine=False)
    assert abs(constant - value) > 1e-4 * abs(value)


def test_lora_train_time_adversaries_match_reference(tar_overrides):
    config, model, params, data, batches, metrics = _one_step(tar_overrides, {"tar.adversary_lora_rank": 2})
    template = data.suite[0]
    assert template.lora is not None and template.lora.rank == 2 and template.lora.dropout == 0.0
    init_key = jax.random.fold_in(step_key(0, STEP), template.seed)  # the engine's per-adversary key
    entropy = lambda logits, b: _neg_entropy(logits, b["attention_mask"])
    value, grad = _reference(model, params, batches, entropy, lora_rank=2, init_key=init_key)
    assert float(metrics["tamper_value"]) == pytest.approx(value, rel=1e-5)
    assert float(metrics["grad_norm_tamper"]) == pytest.approx(np.linalg.norm(flat64(grad)), rel=1e-4)
    # the adapters moved the model: the value is not that of the unattacked model at every record
    x_tr = {k: jnp.asarray(v) for k, v in batches["tamper"].items()}
    weights = sum(np.exp(0.0625 * (k - (K - 1))) for k in range(S - 1, K, S))
    unattacked = weights * float(entropy(_forward(model, params, x_tr), x_tr))
    assert abs(value - unattacked) > 1e-4 * abs(unattacked)


def test_train_adversary_options_are_validated_and_named():
    with pytest.raises(ConfigError, match="adversary_schedule"):
        load_config("toy", {"tar.adversary_schedule": "cosine"})
    with pytest.raises(ConfigError, match="adversary_lora_rank"):
        load_config("toy", {"tar.adversary_lora_rank": 0})
    with pytest.raises(ConfigError, match="tamper_loss"):
        load_config("toy", {"tar.tamper_loss": "ce"})
    tar = load_config("toy", {"tar.adversary_lora_rank": 4, "tar.adversary_schedule": "warmup_cosine"}).tar
    suite = train_suite(tar)
    assert {a.lora.rank for a in suite} == {4} and {a.lora.alpha for a in suite} == {8.0}
    assert {a.schedule.resolved(a.steps).decay_steps for a in suite} == {tar.inner_steps}
    assert all(a.name.endswith("-lora4-cosine") for a in suite)
