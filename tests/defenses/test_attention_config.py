"""``model.attention_impl`` for the decoder defences: the loaded model runs the chosen attention, the TAR step is the
same function under ``reference`` and ``xla`` attention, and ``cudnn`` without a GPU (or without bf16 compute) is
refused before anything is written."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxtar.config import load_config
from jaxtar.defenses import build_tar_phases, run_tar
from jaxtar.defenses._loop import step_key
from jaxtar.defenses.decoder import load_decoder
from jaxtar.errors import ConfigError, InputError


def _noise(tree):
    rng = np.random.default_rng(1)
    return jax.tree.map(lambda x: 0.01 * rng.standard_normal(x.shape).astype(x.dtype), tree)


def test_the_tar_step_is_the_same_under_reference_and_xla_attention(tar_overrides):
    outputs = {}
    for impl in ("reference", "xla"):
        # eps 1: the first Adam update is ~lr * g, not ~lr * sign(g) (which flips on float32 noise)
        config = load_config("toy", {**tar_overrides, "model.attention_impl": impl, "tar.eps": 1.0})
        loaded = load_decoder(config, config.tar.estimator)
        assert loaded.model.config.attention_impl == impl
        phases, data = build_tar_phases(config, loaded.model, loaded.params, loaded.tokenizer)
        phase = phases[0]
        noise = _noise(loaded.params)  # away from the anchor: ||h - h_base|| has no gradient at distance 0
        params = jax.tree.map(lambda x, n: x + n, loaded.params, noise)
        state = phase.init_opt_state(params)
        outputs[impl] = phase.step_fn(params, state, data.batches(0), step_key(0, 0), loaded.params)
    (new_r, _, metrics_r), (new_x, _, metrics_x) = outputs["reference"], outputs["xla"]
    for key in ("tamper_value", "retain_ce", "attack_final", "grad_norm_tamper"):
        np.testing.assert_allclose(float(metrics_x[key]), float(metrics_r[key]), rtol=1e-4, err_msg=key)
    flat = lambda tree: np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])
    start = flat(params)
    delta_r, delta_x = flat(new_r) - start, flat(new_x) - start
    # measured 5e-6 relative (float32 rounding through the K-step attacks)
    assert np.linalg.norm(delta_r) > 0 and np.linalg.norm(delta_x - delta_r) < 1e-4 * np.linalg.norm(delta_r)


def test_cudnn_needs_a_gpu_and_bf16_compute(tar_overrides, tmp_path):
    with pytest.raises(ConfigError, match="needs bfloat16 compute"):
        load_config("toy", {"model.attention_impl": "cudnn"})
    config = load_config("toy", {**tar_overrides, "model.attention_impl": "cudnn", "model.compute_dtype": "bfloat16",
                                 "run.output_dir": str(tmp_path / "run")})  # fmt: skip
    with pytest.raises(InputError, match="model.attention_impl: .*GPU"):
        run_tar(config)
    assert not (tmp_path / "run").exists()
