"""Builds the toy base model shipped in jaxtar/assets/toy/ (run after changing the toy world or its training).

Usage:
    python scripts/build_toy_world.py [--seed 0] [--out jaxtar/assets/toy/base-v<VERSION>-seed<SEED>]
"""

from __future__ import annotations

import argparse
import os

from jaxtar.toy import TOY_WORLD_VERSION, ToyTrainConfig, shipped_toy_model_dir, toy_world, train_toy_base_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="toy-world seed")
    parser.add_argument("--out", default=None, help="output folder (default: the shipped asset folder)")
    parser.add_argument("--steps", type=int, default=ToyTrainConfig.steps, help="training steps")
    args = parser.parse_args()
    out = args.out or shipped_toy_model_dir(TOY_WORLD_VERSION, args.seed)
    print(f"toy world v{TOY_WORLD_VERSION}, seed {args.seed}, {os.cpu_count()} CPUs -> {out}")
    base = train_toy_base_model(toy_world(args.seed), out, ToyTrainConfig(steps=args.steps), overwrite=True)
    if min(base.forget_accuracy, base.retain_accuracy) < 0.8:
        raise SystemExit(f"accuracy below 80 %: forget {base.forget_accuracy:.1%}, retain {base.retain_accuracy:.1%}")


if __name__ == "__main__":
    main()
