"""MLAC in bf16 mixed precision (``mlac.compute_dtype: bfloat16``: float32 master weights, optimiser state and
logits; bf16 encoder activations): the compiled outer step really computes in bf16, and a short run's curves stay
within a stated bound of the float32 run's (measured: loss 3.4e-3, desired CE 2.3e-3 at most over 30 steps)."""

import jax
import numpy as np

from jaxtar.config import MLACConfig
from jaxtar.defenses.mlac import init_state, make_outer_step

STEPS = 20
BOUND = 0.02  # nats, on curves of ~0.4 (loss) and ~1.1 (desired CE)


def test_a_bf16_mlac_run_tracks_the_fp32_run(tiny_bert, random_batch):
    data = random_batch(np.random.default_rng(0), 256)
    curves, texts = {}, {}
    for dtype in (None, "bfloat16"):
        cfg = MLACConfig(inner_steps=2, num_desired=3, inner_batch_sizes=(8,), outer_batch_size=16, inner_lr=1e-2,
                         outer_lr=3e-3, inner_lr_bounds=(1e-4, 0.1), calibration_steps=20,
                         compute_dtype=dtype)  # fmt: skip
        model, params = tiny_bert(cfg)
        step, state = make_outer_step(model, cfg), init_state(params, cfg)
        texts[dtype] = step.lower(state, data, jax.random.key(0)).as_text()
        rows = []
        for i in range(STEPS):
            state, metrics = step(state, data, jax.random.key(i))
            rows.append({k: float(v) for k, v in metrics.items()})
        curves[dtype] = rows
        assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))  # fp32 master weights
    assert "bf16" in texts["bfloat16"] and "bf16" not in texts[None]
    for key in ("loss", "desired_ce", "harmful_value", "attack_loss_last"):
        fp32, bf16 = (np.array([r[key] for r in curves[d]]) for d in (None, "bfloat16"))
        assert np.all(np.isfinite(bf16)) and np.max(np.abs(bf16 - fp32)) < BOUND, (key, fp32, bf16)
    assert abs(curves[None][-1]["loss"] - curves[None][0]["loss"]) > 2e-3  # the curves move: the bound means something
