"""A short MLAC run censors the harmful task: starting from a model trained on both tasks (it leaks the harmful
label), MLAC lowers the post-attack harmful accuracy of the simulated fine-tuning attacker (fresh head, K Adam
steps on trunk + head, held-out data, fixed seeds) while the desired accuracy stays within a stated margin; the
best-validation checkpoint is the one returned."""

import dataclasses

import numpy as np

from jaxtar.defenses.mlac import prepare_model
from jaxtar.defenses.mlac_train import train_mlac
from jaxtar.mlac_config import MLACConfig
from jaxtar.models import model_for_config
from jaxtar.models.bert import BertConfig

DESIRED_MARGIN = 0.10


def _world(n, rng):
    """Token 5/6 = harmful label (gender), tokens 7/8/9 = desired label (3 classes), the rest noise."""
    gender, prof = rng.integers(0, 2, n), rng.integers(0, 3, n)
    ids = rng.integers(10, 32, (n, 8))
    ids[:, 0] = 2
    ids[np.arange(n), rng.integers(1, 4, n)] = 5 + gender
    ids[np.arange(n), rng.integers(4, 8, n)] = 7 + prof
    return {"input_ids": ids.astype(np.int32), "attention_mask": np.ones((n, 8), np.int32),
            "profession": prof.astype(np.int32), "gender": gender.astype(np.int32)}  # fmt: skip


def test_short_mlac_run_lowers_post_attack_harmful_accuracy(fast_compile):
    rng = np.random.default_rng(0)
    train, val = _world(512, rng), _world(128, rng)
    base = MLACConfig(num_desired=3, inner_steps=2, inner_batch_sizes=(16, 32), inner_lr=1e-2, outer_batch_size=32,
                      inner_lr_bounds=(1e-4, 0.1), calibration_steps=30, val_attacks=4, seed=0)  # fmt: skip
    config = BertConfig.tiny(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                             max_position_embeddings=8)  # fmt: skip
    model = model_for_config(config)
    model, params = prepare_model(model, model.init(0), base)
    # the starting model: trained on both tasks, so its encoder carries the harmful label
    joint = dataclasses.replace(base, variant="joint", outer_lr=3e-3, outer_steps=300, eval_every=100)
    leaky = train_mlac(model, params, train, val, joint, compiler_options=fast_compile).best_params
    cfg = dataclasses.replace(base, outer_lr=3e-3, outer_steps=40, eval_every=10)
    res = train_mlac(model, leaky, train, val, cfg, compiler_options=fast_compile)
    start, best = res.history[0], next(r for r in res.history if r["step"] == res.best_step)
    # measured: desired 0.70, attacker 0.95 -> best step 40: desired 0.70, attacker 0.49 (chance)
    assert start["val_desired_acc"] > 0.6 and start["val_attacker_acc"] > 0.85, start
    assert best["val_attacker_acc"] < start["val_attacker_acc"] - 0.3, (start, best)
    assert best["val_desired_acc"] >= start["val_desired_acc"] - DESIRED_MARGIN, (start, best)
    assert res.best_score == min(r["val_score"] for r in res.history)  # the best-validation checkpoint is kept
    assert best["step"] > 0 and len(res.history) == 5
