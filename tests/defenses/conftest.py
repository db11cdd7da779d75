"""Shared fixtures of the defence tests: a small toy-world base model (trained once per session) and the TAR settings
every TAR test uses (so one compiled outer step serves them all, through the session's persistent XLA compilation
cache of tests/conftest.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from filelock import FileLock

from jaxtar.toy import ToyTrainConfig, toy_world, train_toy_base_model

SMALL_BASE = ToyTrainConfig(hidden_size=64, intermediate_size=128, num_layers=1, num_heads=4, steps=150,
                            batch_size=32, seq_len=48, learning_rate=3e-3, warmup_steps=20)  # fmt: skip
TAR_TEST_OVERRIDES = {
    "tar.inner_steps": 4, "tar.tamper_every": 2, "tar.adversaries_per_step": 2, "tar.adversary_batch_size": 8,
    "tar.tamper_batch_size": 8, "tar.retain_batch_size": 8, "tar.lr": 1e-3, "tar.warmup_steps": 0,
    "tar.adversary_lrs": [1e-3, 3e-3], "data.max_length": 48, "run.progress": False, "run.checkpoint_every": 1000,
}  # fmt: skip


def _shared_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root  # one copy for all xdist workers


@pytest.fixture(scope="session")
def toy_base_dir(tmp_path_factory) -> Path:
    """An HF folder (with the toy tokenizer) of a tiny Llama trained briefly on both toy domains."""
    path = _shared_root(tmp_path_factory) / "defenses-toy-base"
    with FileLock(str(path) + ".lock"):
        if not (path / "toy_world.json").is_file():
            train_toy_base_model(toy_world(0), path, SMALL_BASE, overwrite=True, log=None)
    return path


@pytest.fixture(scope="session")
def tar_overrides(toy_base_dir) -> dict:
    """Config overrides (on the toy preset) shared by every TAR test: K = 4, s = 2, A = 2 adversaries."""
    return {**TAR_TEST_OVERRIDES, "model.path": str(toy_base_dir)}
