"""The blocking evaluation of the stand-in MLAC test's models (an experiment, not a test; ~10 min on 2 CPU cores).

It rebuilds the setting of ``tests/mlac/test_mlac_train.py``: the offline Bias-in-Bios stand-in (4000 examples, word
tokenizer, 40 tokens), a 1-layer d = 64 BERT trained on both tasks (harmful term weighted 3: the leaky start), then
60 MLAC outer steps (K = 4 inner Adam steps, inner lr 1e-2, outer lr 3e-3). The test measures the simulated K-step
attacker; this script asks the stronger question of MLAC's blocking evaluation: a fresh-head attacker (linear probe
or full fine-tune) on n examples of val1, its lr / steps chosen by a grid, best-checkpoint gender accuracy on val2,
for the MLAC model, its leaky start and a random encoder.

    python benchmarks/mlac_standin_blocking.py --seed 2  # -> benchmarks/results/mlac_standin/blocking_seed2.{json,md}

``--seed`` is the model's init seed (the test uses 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from jaxtar.checkpoint import write_text_atomic
from jaxtar.config import MLACConfig
from jaxtar.data.bias_in_bios import synthetic_bias_in_bios
from jaxtar.data.bios_tokens import build_word_tokenizer
from jaxtar.defenses.mlac import prepare_model
from jaxtar.defenses.mlac_run import defence_split, encode_splits
from jaxtar.defenses.mlac_train import train_mlac
from jaxtar.eval.blocking import BlockingConfig, blocking_eval
from jaxtar.models import model_for_config
from jaxtar.models.bert import BertConfig

OUT = Path(__file__).parent / "results" / "mlac_standin"
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
MAX_LENGTH = 40


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2, help="the model's init seed (the test uses 2)")
    seed = parser.parse_args().seed
    stem = OUT / f"blocking_seed{seed}"
    if stem.with_suffix(".json").exists():
        raise SystemExit(f"{stem}.json exists: move it away first (results are never overwritten)")
    t0 = time.perf_counter()
    bios = synthetic_bias_in_bios(4000, seed=0)
    tokenizer = build_word_tokenizer(bios["train"]["hard_text"], min_frequency=2)
    splits = encode_splits(bios, tokenizer, MAX_LENGTH)
    train, val = defence_split(splits["train"], 256)
    base = MLACConfig(num_desired=28, inner_steps=4, inner_batch_sizes=(16, 24), inner_lr=1e-2, outer_batch_size=32,
                      inner_lr_bounds=(1e-4, 0.1), calibration_steps=20, val_attacks=2, seed=0)  # fmt: skip
    config = BertConfig.tiny(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_layers=1,
                             num_heads=2, max_position_embeddings=MAX_LENGTH)  # fmt: skip
    model = model_for_config(config)
    model, params = prepare_model(model, model.init(seed), base, seed=seed)
    joint = dataclasses.replace(base, variant="joint", harmful_weight=3.0, outer_lr=3e-3, outer_steps=800,
                                eval_every=400)  # fmt: skip
    leaky = train_mlac(model, params, train, val, joint).best_params
    mlac = dataclasses.replace(base, outer_lr=3e-3, outer_steps=60, eval_every=15)
    res = train_mlac(model, leaky, train, val, mlac, compiler_options=FAST_COMPILE)
    random_init = prepare_model(model, model.init(5), base, seed=5)[1]
    grid = BlockingConfig(ns=(20, 50, 100), lrs=(1e-4, 1e-3, 1e-2), steps=(100, 300), reruns=3, data_seeds=2)
    models = {"mlac": (model, res.best_params), "start (joint-trained)": (model, leaky),
              "random init": (model, random_init)}  # fmt: skip
    out = blocking_eval(models, splits["val1"], splits["val2"], grid, test=splits["test"],
                        compiler_options=FAST_COMPILE, log=print)  # fmt: skip
    out.update(mlac_best_step=res.best_step, mlac_history=res.history, seconds=time.perf_counter() - t0)
    OUT.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stem.with_suffix(".json"), json.dumps(out, indent=1, default=float))
    lines = [f"init seed {seed}; chance (val2 majority) {out['chance']:.3f}; MLAC best step {res.best_step}; "
             f"{out['seconds']:.0f} s", "",
             "| model | desired acc. | " + " | ".join(f"n={n}" for n in grid.ns) + " |",
             "|---" * (2 + len(grid.ns)) + "|"]  # fmt: skip
    for name, m in out["models"].items():
        cells = [f"{m['harmful'][str(n)]['mean']:.3f} ± {m['harmful'][str(n)]['std']:.3f}" for n in grid.ns]
        lines.append(f"| {name} | {m['desired_accuracy']:.3f} | " + " | ".join(cells) + " |")
    write_text_atomic(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
