"""TAR variants: the refusal setting end to end (DPO tamper loss, then the post-TAR SFT phase, exported model)."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
from tar_reference import flat64, next_token_ce, rel_err

from jaxtar.checkpoint import Checkpointer
from jaxtar.config import load_config
from jaxtar.defenses import build_tar_phases, load_model, run_tar, schedule_free_params

# ----------------------------------------------------------------------------------------------------------------
# Refusal TAR end to end: DPO tamper loss on the toy world's preference pairs (chosen = a refusal, rejected = the
# answer), the adversary fine-tuning on the harmful replies, then the SFT phase on a local text file.

N_TAR, N_SFT, SFT_LR, SFT_ROWS = 3, 5, 1e-3, 8


def _adam_sft_reference(model, params, batches, lr, steps):
    """``steps`` hand-written Adam steps (b1 0.9, b2 0.999, eps 1e-8, no weight decay) on next-token CE."""
    grad = jax.jit(jax.grad(lambda p, b: next_token_ce(model.apply(p, b["input_ids"], b["attention_mask"]).logits,
                                             b["input_ids"], b["loss_mask"])))  # fmt: skip
    m = jax.tree.map(jnp.zeros_like, params)
    v = jax.tree.map(jnp.zeros_like, params)
    for t in range(1, steps + 1):
        g = grad(params, batches[t - 1])
        m = jax.tree.map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
        v = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
        params = jax.tree.map(
            lambda p, m, v, t=t: p - lr * (m / (1 - 0.9**t)) / (jnp.sqrt(v / (1 - 0.999**t)) + 1e-8), params, m, v
        )
    return params


def test_refusal_tar_runs_dpo_then_sft_and_exports_the_sft_model(toy_base_dir, tmp_path):
    from jaxtar.models import from_pretrained
    from jaxtar.toy import toy_world

    sft_file = tmp_path / "sft.txt"  # a local text source, one example per line, as a user would pass it
    lines = [t for t in toy_world(0).retain_texts if "\n" not in t][:SFT_ROWS]
    sft_file.write_text("\n".join(lines) + "\n")
    config = load_config("toy", {
        "model.path": str(toy_base_dir), "run.output_dir": str(tmp_path / "run"), "run.progress": False,
        "run.checkpoint_every": 1000, "data.max_length": 48, "data.harmful": "toy:harmful",
        "data.preferences": "toy:preferences", "data.sft": str(sft_file),
        "tar.setting": "refusal", "tar.tamper_loss": "dpo", "tar.lambda_tr": 0.5, "tar.outer_steps": N_TAR,
        "tar.warmup_steps": 0, "tar.inner_steps": 2, "tar.tamper_every": 1, "tar.adversaries_per_step": 1,
        "tar.adversary_lrs": [1e-3], "tar.adversary_batch_size": 4, "tar.tamper_batch_size": 4,
        "tar.retain_batch_size": 4, "tar.sft_steps": N_SFT, "tar.sft_lr": SFT_LR, "tar.sft_batch_size": SFT_ROWS,
    })  # fmt: skip
    result = run_tar(config)
    assert result.steps == N_TAR + N_SFT and not result.interrupted and result.model_dir is not None

    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    tar = [r for r in records if r["phase"] == "tar"]
    sft = [r for r in records if r["phase"] == "sft"]
    assert [r["step"] for r in tar] == list(range(1, N_TAR + 1))
    assert [r["step"] for r in sft] == list(range(N_TAR + 1, N_TAR + N_SFT + 1))  # the SFT phase ran N_SFT steps
    assert all(math.isfinite(v) for r in records for v in r.values() if isinstance(v, float))
    # The post-attack DPO loss starts above log 2 (the attack moved the policy towards the harmful replies; with
    # policy == reference it would be log 2) and TAR lowers it (measured 1.09 -> 0.41).
    print("TAR tamper loss per step:", [round(r["tamper_loss"], 4) for r in tar])
    assert tar[0]["tamper_loss"] > math.log(2) and tar[-1]["tamper_loss"] < tar[0]["tamper_loss"] - 0.2
    assert all(r["attack_first"] > r["attack_final"] > 0 and r["representation"] >= 0 for r in tar)
    ce = [r["sft_ce"] for r in sft]  # the same 8 rows every step: the SFT loss must fall
    print("SFT CE per step:", [round(c, 4) for c in ce])
    assert ce[-1] < ce[0] - 0.1 and all(b < a for a, b in zip(ce, ce[1:]))  # measured 1.42 -> 1.15, monotone

    # The exported model = the end-of-TAR weights (schedule-free x average, from the step-N_TAR checkpoint) plus
    # exactly N_SFT Adam steps on the SFT rows, recomputed here by hand.
    model, base, tokenizer = load_model(config.model)
    phases, data = build_tar_phases(config, model, base, tokenizer)
    assert data.streams["sft"].num_rows == SFT_ROWS  # one example per line of the local file
    ckpt = Checkpointer(result.output_dir / "checkpoints", async_save=False)
    try:
        assert ckpt.all_steps() == [N_TAR, N_TAR + N_SFT]
        target = jax.eval_shape(lambda p: {"params": p, "opt_state": phases[0].init_opt_state(p)}, base)
        state, meta = ckpt.restore(N_TAR, target)
    finally:
        ckpt.close()
    assert meta["phase"] == "tar"
    tar_end = schedule_free_params(state["params"], state["opt_state"])
    batches = [{k: jnp.asarray(v) for k, v in data.sft_batches(N_TAR + i)["sft"].items()} for i in range(N_SFT)]
    want = _adam_sft_reference(model, tar_end, batches, SFT_LR, N_SFT)
    _, exported = from_pretrained(result.model_dir)
    got, want, start = flat64(exported), flat64(want), flat64(tar_end)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, flat64(result.params), rtol=0, atol=0)  # the export is the returned params
    assert np.max(np.abs(got - start)) > 0.5 * SFT_LR * N_SFT  # SFT moved the weights (Adam: ~lr per step)
    assert np.max(np.abs(got - want)) < 1e-4 and rel_err(got - start, want - start) < 1e-3
    assert np.max(np.abs(start - flat64(base))) > 1e-3  # ... and TAR moved them before that
