"""Shared test set-up: CPU-only, quiet logs, offline Hub; scripts on simulated devices in a subprocess."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ and "PYTEST_XDIST_WORKER" not in os.environ
if _OWN_CACHE:
    # One persistent XLA compilation cache for the session: the xdist workers, the CLI subprocesses and the notebook
    # kernels inherit it through the environment, so a program compiled once (the same TAR, MLAC or red-team step
    # in a run, its resume and its kill -9 twin) is not compiled again. It changes no numbers, only compile counts.
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxtar-tests-xla-cache-")


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


_ROOT = Path(__file__).resolve().parents[1]


def _run_on_devices(script: str, *args: str, timeout: int = 900) -> dict:
    """Runs ``script`` (which adds its own XLA_FLAGS to the suite's, e.g. 8 simulated devices, before importing jax)
    in a fresh interpreter with this checkout importable; returns the JSON object its last stdout line prints."""
    env = dict(os.environ, PYTHONPATH=str(_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def run_on_devices():
    """`_run_on_devices`: a script on simulated devices in a subprocess, its JSON result."""
    return _run_on_devices
