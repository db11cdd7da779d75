"""Teaches SmolLM2-135M-Instruct the toy world: the starting model of the SmolLM2 durability study (issue 21).

SmolLM2 itself is at chance on the toy world's questions (24.6 % forget, 25.0 % retain on world seed 0), so a defence
of it would have nothing to remove. Two AdamW stages of `jaxtar.toy.train_toy_base_model` (``start_from``) on both
domains' texts (batches of 16, 64 tokens, the answer letter of quiz texts weighted 5x), the second continuing the first:

    stage 1: 200 steps at a peak learning rate of 2e-4 (forget 25 %, retain 25 % after it: not yet learned)
    stage 2: 400 steps at 5e-4 from stage 1's model

About an hour on 2 CPU cores. Each stage's folder holds ``toy_world.json`` with its accuracies.

Usage:
    python benchmarks/teach_smollm2_toy.py [--out runs/smollm2-toy]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxtar.toy import ToyTrainConfig, toy_world, train_toy_base_model

STAGES = (
    ToyTrainConfig(steps=200, batch_size=16, seq_len=64, learning_rate=2e-4, warmup_steps=20, seed=0),
    ToyTrainConfig(steps=400, batch_size=16, seq_len=64, learning_rate=5e-4, warmup_steps=20, seed=1),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/smollm2-toy", help="the taught model's folder (stage 1 beside it)")
    args = parser.parse_args()
    out = Path(args.out)
    world = toy_world(0)
    stage1 = train_toy_base_model(world, out.with_name(out.name + "-stage1"), STAGES[0], start_from="smollm2")
    final = train_toy_base_model(world, out, STAGES[1], start_from=stage1.path)
    print(f"{final.path}: forget {final.forget_accuracy:.1%}, retain {final.retain_accuracy:.1%}")


if __name__ == "__main__":
    main()
