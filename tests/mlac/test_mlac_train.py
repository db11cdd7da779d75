"""A short MLAC run censors the harmful task on the offline Bias-in-Bios stand-in.

The starting ("pretrained") model is a small BERT trained on both tasks of the stand-in, so its encoder carries the
harmful label (gender, mostly through first names). MLAC must lower the post-attack harmful accuracy of a simulated
fine-tuning attacker (fresh head, K Adam steps on trunk + head, its learning rate and K as in training) measured on
the stand-in's held-out ``val1`` split, which neither training phase sees, with attack seeds training never used;
the desired accuracy of the released head on ``val1`` stays within ``DESIRED_MARGIN``. The best-validation checkpoint
is the one returned.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np

from jaxtar.config import MLACConfig
from jaxtar.data.bias_in_bios import synthetic_bias_in_bios
from jaxtar.data.bios_tokens import build_word_tokenizer, encode_bios
from jaxtar.defenses.mlac import prepare_model
from jaxtar.defenses.mlac_run import defence_split
from jaxtar.defenses.mlac_train import make_validator, train_mlac
from jaxtar.models import model_for_config
from jaxtar.models.bert import BertConfig

DESIRED_MARGIN = 0.10
MAX_LENGTH = 40


def _standin():
    bios = synthetic_bias_in_bios(4000, seed=0)
    tokenizer = build_word_tokenizer(bios["train"]["hard_text"], min_frequency=2)
    train = encode_bios(bios["train"], tokenizer, MAX_LENGTH)
    heldout = encode_bios(bios["val1"], tokenizer, MAX_LENGTH)
    return *defence_split(train, 256), heldout, len(tokenizer)  # checkpoint-selection data cut from train


# 860 steps run here: compiled at XLA's default optimisation level (the suite's is 0, see conftest.py) the
# test takes 47 s instead of 73 s on this machine
RUNTIME_BOUND = {"xla_backend_optimization_level": 2}


def test_short_mlac_run_lowers_post_attack_harmful_accuracy_on_the_standin():
    train, val, heldout, vocab_size = _standin()
    base = MLACConfig(num_desired=28, inner_steps=4, inner_batch_sizes=(16, 24), inner_lr=1e-2, outer_batch_size=32,
                      inner_lr_bounds=(1e-4, 0.1), calibration_steps=20, val_attacks=2, seed=0)  # fmt: skip
    config = BertConfig.tiny(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_layers=1, num_heads=2,
                             max_position_embeddings=MAX_LENGTH)  # fmt: skip
    model = model_for_config(config)
    model, params = prepare_model(model, model.init(2), base, seed=2)
    # the starting model: trained on both tasks (harmful term weighted 3: gender is learned within a few hundred
    # steps instead of emerging late), so its encoder leaks gender
    joint = dataclasses.replace(base, variant="joint", harmful_weight=3.0, outer_lr=3e-3, outer_steps=800,
                                eval_every=400)  # fmt: skip
    leaky = train_mlac(model, params, train, val, joint, compiler_options=RUNTIME_BOUND).best_params
    cfg = dataclasses.replace(base, outer_lr=3e-3, outer_steps=60, eval_every=15)
    res = train_mlac(model, leaky, train, val, cfg, compiler_options=RUNTIME_BOUND)

    assert res.best_score == min(r["val_score"] for r in res.history)  # the best-validation checkpoint is kept
    assert res.best_step > 0 and [r["step"] for r in res.history] == [0, 15, 30, 45, 60]

    # held-out evaluation: val1, 8 attacks with seeds the training never drew
    evaluate = make_validator(model, dataclasses.replace(cfg, val_attacks=8, seed=1234), compiler_options=RUNTIME_BOUND)
    held = {k: jnp.asarray(heldout[k]) for k in ("input_ids", "attention_mask", "profession", "gender")}
    before = {k: float(v) for k, v in evaluate(leaky, jnp.float32(cfg.inner_lr), held).items()}
    after = {k: float(v) for k, v in evaluate(res.best_params, jnp.float32(cfg.inner_lr), held).items()}
    # measured: attacker 0.90 -> 0.65, harmful CE 0.38 -> 0.65, desired 0.84 -> 0.79 (best step 30; compiled at XLA
    # level 0 instead: 0.90 -> 0.59, 0.43 -> 0.66, 0.81 -> 0.80, best step 30). With init seed 1 the effect was
    # smaller: attacker 0.90 -> 0.72, CE 0.40 -> 0.60, desired 0.79 -> 0.70 (best step 45).
    assert before["val_attacker_acc"] > 0.75, before  # the start leaks gender to the attacker
    assert after["val_attacker_acc"] < before["val_attacker_acc"] - 0.15, (before, after)
    assert after["val_harmful_ce"] > before["val_harmful_ce"] + 0.1, (before, after)
    assert after["val_desired_acc"] >= before["val_desired_acc"] - DESIRED_MARGIN, (before, after)
    assert before["val_desired_acc"] > 0.6, before
    assert np.isfinite(res.best_score)


_PLACED_ONCE = """
import json, os
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
import numpy as np
from jaxtar.config import MLACConfig
from jaxtar.data.bias_in_bios import synthetic_bias_in_bios
from jaxtar.data.bios_tokens import build_word_tokenizer, encode_bios, encode_bios_lazily
from jaxtar.defenses._steps import place, shard_batches
from jaxtar.defenses.mlac import prepare_model
from jaxtar.defenses.mlac_run import defence_split
from jaxtar.defenses.mlac_train import mlac_phase
from jaxtar.models import model_for_config
from jaxtar.models.bert import BertConfig
from jaxtar.parallel import make_mesh

bios = synthetic_bias_in_bios(400, seed=0)
tokenizer = build_word_tokenizer(bios["train"]["hard_text"], min_frequency=2)
train = {k: v[1:] for k, v in encode_bios(bios["train"], tokenizer, 24).items()}  # 339 rows: an odd number
train_lazy = encode_bios_lazily(bios["train"], tokenizer, 24)
lazy = defence_split(train_lazy, 1)[0]  # the same rows, made on demand
cfg = MLACConfig(num_desired=28, inner_steps=1, inner_batch_sizes=(8,), outer_batch_size=16, outer_steps=2)
model = model_for_config(BertConfig.tiny(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                         num_layers=1, num_heads=2, max_position_embeddings=24))
model, _ = prepare_model(model, model.init(0), cfg, seed=0)
mesh = make_mesh(1, 2, 1)
phase = mlac_phase(model, lazy, train, cfg, mesh=mesh)
first = phase.batches_fn(0)
placed = shard_batches(first, mesh, phase.batch_axes)
params = place(model.init(0), mesh)
opt_state = place(phase.init_opt_state(params), mesh)
for step in range(3):  # each step takes the previous one's outputs
    params, opt_state, _ = phase.step_fn(params, opt_state, phase.batches_fn(step), None, None)
# a run with a warm-up: its two phases share one placed copy of the defence set
from jaxtar.config import load_mlac_config
from jaxtar.defenses.mlac_run import _load, _phases
config = load_mlac_config("mlac-offline", {"mlac_run.num_examples": 200, "mlac_run.warmup_steps": 2,
                                           "mlac.outer_batch_size": 16, "run.output_dir": "unused"})
loaded = _load(config, mesh)
warmup, main = _phases(config, loaded.model, loaded.params, loaded.tokenizer, mesh)
a, b = warmup.batches_fn(0), main.batches_fn(0)
# the validation rows are placed the same way (each process tokenising its own shards); the test split is scored on
# the mesh in equal chunks (37 rows in 5 chunks of 8, the last padded), with the numbers of one device
from jaxtar.data.rows import take_rows
from jaxtar.defenses.mlac_train import place_defence_set
from jaxtar.eval.blocking import desired_accuracy
val_rows = defence_split(train_lazy, 37)[1]
val = place_defence_set(model, val_rows, cfg, mesh, name="val")
# MLAC validates on those rows placed (padded on the mesh, read without the padding): the numbers of one device
validation = []
for where, rows in ((mesh, val), (None, val_rows)):
    check = mlac_phase(model, lazy, rows, cfg, mesh=where)
    weights = place(model.init(0), where)
    metrics = check.validate(weights, place(check.init_opt_state(weights), where))
    validation.append({k: float(v) for k, v in metrics.items()})
full = encode_bios(bios["train"], tokenizer, 24)["input_ids"]
test = {k: take_rows(v, slice(0, 37)) for k, v in encode_bios_lazily(bios["test"], tokenizer, 24).items()}
whole = encode_bios(bios["test"], tokenizer, 24)
logits = np.asarray(model.apply(model.init(0), whole["input_ids"][:37], whole["attention_mask"][:37]).logits)
pred = np.argmax(logits[:, :28], -1)
test["profession"] = np.where(np.arange(37) < 20, pred, (pred + 1) % 28)  # the first 20 rows right, 17 wrong
print(json.dumps({
    "val": [val.rows, int(val.arrays["input_ids"].shape[0]), len(val.arrays["input_ids"].addressable_shards)],
    "val_equal": bool(np.array_equal(np.asarray(val.arrays["input_ids"]), full[np.r_[0:37, 0]])),
    "accuracy": [desired_accuracy(model, params, test, 28, batch_size=8, mesh=mesh),
                 desired_accuracy(model, params, test, 28, batch_size=8)],
    "validation": validation,
    "accuracy_init": [desired_accuracy(model, model.init(0), test, 28, batch_size=8, mesh=mesh),
                      desired_accuracy(model, model.init(0), test, 28, batch_size=8)],
    "phases": [warmup.name, main.name],
    "shared": sorted(a) == sorted(b) and all(a[k] is b[k] and len(a[k].addressable_shards) == 2 for k in a),
    "compiles": phase.step_fn.jitted._cache_size(),
    "same": all(placed[k] is first[k] and phase.batches_fn(1)[k] is first[k] for k in first),
    "split": [len(first[k].addressable_shards) for k in first],
    "rows": [int(first[k].addressable_shards[0].data.shape[0]) for k in first],
    "n": int(len(train["gender"])),
    "equal": all(bool(np.array_equal(np.asarray(first[k])[: len(train[k])], train[k])) for k in first),
    "padding": all(bool(np.array_equal(np.asarray(first[k])[len(train[k]) :], train[k][:1])) for k in first),
}))
"""


def test_the_defence_set_is_placed_on_the_mesh_once(run_on_devices):
    """On a mesh MLAC's defence set is placed once (one copy for the warm-up and the MLAC phase), its rows (made on
    demand, padded to a multiple of data x fsdp) split across data x fsdp, and the loop finds it in place at every
    step (no copy of the whole set per step; across processes each fills, and tokenises, only its own shards)."""
    out = run_on_devices(_PLACED_ONCE)
    assert out["same"] and out["equal"], out
    assert out["phases"] == ["warmup", "mlac"] and out["shared"], out  # the warm-up and MLAC share one copy
    assert out["compiles"] == 1, out  # the steps' outputs keep the inputs' FSDP placement (measured 2 before)
    assert out["n"] % 2 == 1 and out["padding"], out  # an odd number of rows, padded with one copy of row 0
    assert out["split"] == [2, 2, 2, 2] and all(2 * r == out["n"] + 1 for r in out["rows"]), out
    # the validation rows too (37, padded to 38 with a copy of row 0); the test split scored on the mesh
    assert out["val"] == [37, 38, 2] and out["val_equal"], out
    mesh_val, one_val = out["validation"]
    assert sorted(mesh_val) == sorted(one_val) and len(one_val) >= 5, out
    assert all(abs(mesh_val[k] - v) <= 1e-5 * max(1.0, abs(v)) for k, v in one_val.items()), out
    assert out["accuracy"][0] == out["accuracy"][1], out  # the trained weights, FSDP-sharded, and on one device
    assert out["accuracy_init"] == [20 / 37] * 2, out  # labels made so that exactly 20 of the 37 rows are right
