"""The persistent compilation cache a defence run turns on by default (``run.compilation_cache``): beside the run
folder, unless a cache is already configured (as the test session's own is), and not at all when switched off."""

from __future__ import annotations

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

from jaxtar.config import load_config
from jaxtar.defenses import run_random_mapping
from jaxtar.defenses._steps import COMPILATION_CACHE_DIR, use_compilation_cache


@pytest.fixture
def no_cache_configured():
    """The session's cache (tests/conftest.py) switched off for one test, then restored. Every program is cached
    meanwhile, however fast it compiles (JAX caches only those over 1 s by default, and the suite's quick-compile
    flags bring the step this test runs under that)."""
    before = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compilation_cache.reset_cache()
    yield
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    compilation_cache.reset_cache()


def _run(tar_overrides, folder, **overrides):  # random mapping: the runner's path, the cheapest step to compile
    return run_random_mapping(load_config("toy", {**tar_overrides, "random_mapping.steps": 1,
                                                  "random_mapping.forget_batch_size": 4,
                                                  "random_mapping.retain_batch_size": 4,
                                                  "run.output_dir": str(folder), **overrides}))  # fmt: skip


def test_a_run_caches_its_compiled_steps_beside_its_folder(tar_overrides, tmp_path, no_cache_configured):
    _run(tar_overrides, tmp_path / "runs" / "rm")
    cache = tmp_path / "runs" / COMPILATION_CACHE_DIR
    assert cache.is_dir() and any("jit_" in p.name for p in cache.iterdir())  # the defence step, at least
    assert jax.config.jax_compilation_cache_dir == str(cache)
    assert use_compilation_cache(tmp_path / "elsewhere" / "run") is None  # now configured: left as it is


def test_switched_off_no_cache_is_written(tar_overrides, tmp_path, no_cache_configured):
    _run(tar_overrides, tmp_path / "runs" / "rm", **{"run.compilation_cache": False})
    assert not (tmp_path / "runs" / COMPILATION_CACHE_DIR).exists() and not jax.config.jax_compilation_cache_dir
