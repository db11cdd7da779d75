"""The baselines of TAR's tables (max entropy, min posterior, LLMU, RMU): each loss against its formula on
hand-made numbers, each defence through the shared runner on a tiny toy model, and ``jaxtar defend baseline``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxtar.commands.defend  # noqa: F401 - registers `jaxtar defend`
from jaxtar.cli import main
from jaxtar.config import ModelConfig, load_config
from jaxtar.config.defence import BaselineConfig
from jaxtar.data.rows import materialise
from jaxtar.defenses import METHODS, baseline_objective, build_baseline_phases, load_model, run_baseline
from jaxtar.defenses.baselines import rmu_layers
from jaxtar.errors import ConfigError
from jaxtar.models import from_pretrained
from jaxtar.objectives import (
    activation_mse,
    gradient_ascent_loss,
    kl_to_reference,
    log_one_minus_p,
    max_entropy_loss,
    min_posterior_loss,
    random_completion_loss,
    rmu_steering_vector,
)

# ----------------------------------------------------------------------------------- the losses, by hand

PROBS = np.array(
    [[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]],
     [[0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.05, 0.9, 0.05], [1 / 3, 1 / 3, 1 / 3]]]
)  # fmt: skip
LOGITS = jnp.asarray(np.log(PROBS), jnp.float32)
BATCH = {
    "input_ids": jnp.array([[0, 1, 2, 0], [2, 0, 1, 1]]),
    "attention_mask": jnp.array([[1, 1, 1, 0], [1, 1, 1, 1]]),
}


def _entropy(p):
    return -(p * np.log(p)).sum(-1)


def _target_probs():
    """p(y_{t+1}) at each predicting position [2, 3] and its mask (target real)."""
    ids, mask = np.asarray(BATCH["input_ids"]), np.asarray(BATCH["attention_mask"])
    p = np.take_along_axis(PROBS[:, :-1], ids[:, 1:, None], -1)[..., 0]
    return p, mask[:, 1:]


def test_max_entropy_loss_is_minus_the_mean_entropy_over_real_tokens():
    mask = np.asarray(BATCH["attention_mask"])
    h = _entropy(PROBS)
    np.testing.assert_allclose(max_entropy_loss(LOGITS, BATCH), -(h * mask).sum() / mask.sum(), rtol=1e-6)
    np.testing.assert_allclose(max_entropy_loss(LOGITS, BATCH, unmasked=True), -h.mean(), rtol=1e-6)


def test_min_posterior_loss_is_minus_log_one_minus_p_with_the_threshold():
    p, mask = _target_probs()
    expected = -(np.log1p(-p) * mask).sum() / mask.sum()
    np.testing.assert_allclose(min_posterior_loss(LOGITS, BATCH), expected, rtol=1e-6)
    # a threshold above log p(y) for the tokens with p < 0.25 drops them from the sum, not from the count
    kept = p >= 0.25
    expected = -(np.log1p(-p) * mask * kept).sum() / mask.sum()
    np.testing.assert_allclose(min_posterior_loss(LOGITS, BATCH, threshold=float(np.log(0.25))), expected, rtol=1e-6)


def test_log_one_minus_p_is_stable_where_p_is_one_in_float32():
    logits = jnp.array([[[30.0, 0.0], [0.0, 0.0]]])
    value = log_one_minus_p(logits, jnp.array([[1, 0]]))  # target 0 at position 0: p = 1 - 9.4e-14 (1.0 in f32)
    assert float(value[0, 0]) == pytest.approx(-30.0, abs=1e-4)
    with np.errstate(divide="ignore"):
        assert not np.isfinite(np.log1p(-np.float32(jax.nn.softmax(logits[0, 0])[0])))  # the naive form: -inf


def test_gradient_ascent_loss_is_the_negated_cross_entropy():
    p, mask = _target_probs()
    np.testing.assert_allclose(gradient_ascent_loss(LOGITS, BATCH), (np.log(p) * mask).sum() / mask.sum(), rtol=1e-6)


def test_random_completion_loss_scores_the_benign_tokens_from_the_forget_input():
    benign = {
        "input_ids": jnp.array([[2, 2, 0, 1], [1, 1, 0, 2]]),
        "attention_mask": jnp.array([[1, 1, 1, 1], [1, 1, 0, 0]]),
    }
    z = np.asarray(benign["input_ids"])
    p = np.take_along_axis(PROBS[:, :-1], z[:, 1:, None], -1)[..., 0]
    mask = np.asarray(BATCH["attention_mask"])[:, 1:] * np.asarray(benign["attention_mask"])[:, 1:]
    np.testing.assert_allclose(random_completion_loss(LOGITS, BATCH, benign), -(np.log(p) * mask).sum() / mask.sum(),
                               rtol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match="must match"):
        random_completion_loss(LOGITS, BATCH, {"input_ids": jnp.zeros((1, 4), jnp.int32)})


def test_kl_to_reference_is_the_forward_kl_from_the_original_model():
    q = PROBS[:, ::-1]  # another distribution at every position
    mask = np.asarray(BATCH["attention_mask"])
    kl = (PROBS * (np.log(PROBS) - np.log(q))).sum(-1)
    value = kl_to_reference(jnp.asarray(np.log(q), jnp.float32), LOGITS, BATCH)
    np.testing.assert_allclose(value, (kl * mask).sum() / mask.sum(), rtol=1e-5)
    assert float(kl_to_reference(LOGITS, LOGITS, BATCH)) == pytest.approx(0.0, abs=1e-7)
    grads = jax.grad(lambda ref: kl_to_reference(LOGITS * 0.5, ref, BATCH))(LOGITS)
    assert float(jnp.abs(grads).max()) == 0.0  # the original model is frozen


def test_rmu_steering_vector_and_activation_mse():
    v = rmu_steering_vector(jax.random.key(3), 64, 6.5)
    u = np.asarray(jax.random.uniform(jax.random.key(3), (64,)))
    np.testing.assert_allclose(v, 6.5 * u / np.linalg.norm(u), rtol=1e-6)
    h = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3) / 10
    target = np.array([0.5, -1.0, 2.0], np.float32)
    mask = np.asarray(BATCH["attention_mask"])
    per_token = ((h - target) ** 2).mean(-1)
    np.testing.assert_allclose(activation_mse(jnp.asarray(h), jnp.asarray(target), BATCH),
                               (per_token * mask).sum() / mask.sum(), rtol=1e-6)  # fmt: skip
    np.testing.assert_allclose(activation_mse(jnp.asarray(h), jnp.asarray(target), BATCH, unmasked=True),
                               per_token.mean(), rtol=1e-6)  # fmt: skip


def test_baseline_config_defaults_and_refusals():
    c = BaselineConfig()
    assert (c.steps, c.lr, c.warmup_steps, c.forget_batch_size) == (1000, 1e-5, 100, 8)  # TAR's baselines.py
    assert (c.llmu_ascent_weight, c.llmu_random_weight, c.llmu_normal_weight) == (0.5, 1.0, 1.0)  # LLMU
    assert (c.rmu_layer, c.rmu_steering_coefficient, c.rmu_alpha, c.rmu_params) == (7, 6.5, 1200.0, ("down_proj",))
    assert rmu_layers(c) == (5, 6, 7)
    for bad in ({"method": "npo"}, {"method": "rmu", "weight_decay": 0.01}, {"rmu_update_layers": ()}):
        with pytest.raises(ConfigError):
            BaselineConfig(**bad)
    assert METHODS["baseline"] is run_baseline


# ----------------------------------------------------------------------------------- the defences, run

STEPS = 3
OVERRIDES = {
    "baseline.steps": STEPS, "baseline.lr": 3e-3, "baseline.warmup_steps": 0, "baseline.forget_batch_size": 8,
    "baseline.retain_batch_size": 8, "baseline.rmu_layer": 0, "baseline.rmu_steering_coefficient": 20.0,
    "baseline.rmu_alpha": 10.0,
    "baseline.rmu_params": ["down_proj"], "data.max_length": 48, "run.progress": False, "run.checkpoint_every": 1000,
}  # fmt: skip


@pytest.fixture(scope="module")
def base(toy_base_dir):
    return load_model(ModelConfig(path=str(toy_base_dir)))


def _config(toy_base_dir, method, out):
    return load_config("toy", {**OVERRIDES, "baseline.method": method, "model.path": str(toy_base_dir),
                               "run.output_dir": str(out)})  # fmt: skip


@pytest.mark.parametrize("method", ["max_entropy", "min_posterior", "llmu", "rmu"])
def test_each_baseline_lowers_its_objective_through_the_runner(method, base, toy_base_dir, tmp_path):
    model, params0, tokenizer = base
    config = _config(toy_base_dir, method, tmp_path / method)
    result = run_baseline(config, model=model, params=params0, tokenizer=tokenizer)
    assert result.steps == STEPS and (result.model_dir / "model.safetensors").is_file()
    (phase,) = build_baseline_phases(config, model, params0, tokenizer)[0]
    assert phase.name == method
    objective = jax.jit(baseline_objective(model, config.baseline))
    batches = jax.tree.map(jnp.asarray, materialise(phase.batches_fn(0)))
    before, m0 = objective(params0, batches, params0)
    after, m1 = objective(result.params, batches, params0)
    assert float(after) < float(before) - 1e-3, (method, float(before), float(after))
    if method in ("llmu", "max_entropy"):  # the forget text's next-token CE goes up
        assert float(m1["forget_ce"]) > float(m0["forget_ce"]) + 1e-3
    if method == "max_entropy":
        assert float(m1["forget_loss"]) < float(m0["forget_loss"])  # higher entropy on forget text
    if method in ("llmu", "rmu"):
        assert float(m0["retain_loss"]) == pytest.approx(0.0, abs=1e-6)  # KL / MSE to the original start at 0


def test_rmu_steers_the_layer_towards_the_control_vector_and_trains_only_down_proj(base, toy_base_dir, tmp_path):
    model, params0, tokenizer = base
    config = _config(toy_base_dir, "rmu", tmp_path / "rmu")
    result = run_baseline(config, model=model, params=params0, tokenizer=tokenizer)
    rows = materialise(build_baseline_phases(config, model, params0, tokenizer)[0][0].batches_fn(0))["forget"]
    control = np.asarray(rmu_steering_vector(jax.random.key(config.baseline.rmu_seed), model.config.hidden_size,
                                             20.0))  # fmt: skip
    mask = rows["attention_mask"].astype(bool)

    def layer(p):  # the layer-0 output (hidden state 1) at real forget tokens
        out = model.apply(p, jnp.asarray(rows["input_ids"]), jnp.asarray(rows["attention_mask"]),
                          output_hidden_states=True)  # fmt: skip
        return np.asarray(out.hidden_states[1])[mask]

    h0, h1 = layer(params0), layer(result.params)
    dist0, dist1 = np.linalg.norm(h0 - control, axis=-1).mean(), np.linalg.norm(h1 - control, axis=-1).mean()
    assert dist1 < 0.95 * dist0, (dist0, dist1)
    cos = [float(np.mean(h @ control / np.linalg.norm(h, axis=-1) / 20.0)) for h in (h0, h1)]
    assert cos[1] > cos[0] + 0.01, cos
    flat0 = dict(jax.tree_util.tree_leaves_with_path(params0))
    moved = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(result.params):
        if not np.allclose(leaf, flat0[path], rtol=1e-6, atol=1e-7):
            moved.append(jax.tree_util.keystr(path))
    assert moved == ["['layers']['down_proj']['kernel']"]


def test_defend_baseline_cli_writes_an_exported_model_and_refuses_an_unknown_method(toy_base_dir, tmp_path, capsys):
    flags = [x for k, v in OVERRIDES.items() for x in (f"--{k.replace('_', '-')}", str(v).lower()
                                                       if isinstance(v, bool) else str(v))]  # fmt: skip
    out = tmp_path / "cli"
    code = main(["defend", "baseline", "--baseline.method", "min_posterior", "--preset", "toy", "--model.path",
                 str(toy_base_dir), *flags, "--output", str(out)])  # fmt: skip
    assert code == 0
    assert f"model: {out / 'model'}" in capsys.readouterr().out
    assert {"run.json", "config.yaml", "metrics.jsonl", "result.json", "model"} <= {p.name for p in out.iterdir()}
    assert load_config(out / "config.yaml").baseline.method == "min_posterior"
    model, params = from_pretrained(out / "model")
    _, base_params = from_pretrained(toy_base_dir)
    assert not np.allclose(params["layers"]["down_proj"]["kernel"], base_params["layers"]["down_proj"]["kernel"])

    refused = tmp_path / "refused"
    code = main(["defend", "baseline", "--baseline.method", "npo", "--preset", "toy", "--output", str(refused)])
    assert code == 2 and not refused.exists()
    assert "BaselineConfig.method must be one of" in capsys.readouterr().err
