"""glibc malloc tunables: which jaxtar adds, that they really cut page faults (malloc and XLA), and the re-exec."""

import os
import statistics
import subprocess
import sys

import pytest

from jaxtar import malloc_tuning

_MADVISE_GLIBC = dict(mode="madvise", glibc=(2, 36))
_REUSE = "glibc.malloc.mmap_max=0:glibc.malloc.arena_max=1:glibc.malloc.trim_threshold=1099511627776"
# malloc (not numpy, which advises huge pages itself) 256 MiB, touch every byte, free, and do it again; count this
# process's minor faults of each round.
_FAULTS = """
import ctypes, resource
libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p; libc.free.argtypes = [ctypes.c_void_p]
n = 256 * 2**20
for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(n); ctypes.memset(p, 1, n); libc.free(p)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
# One jitted call with a 256 MiB temporary buffer, six times; the faults of calls 2-6.
_XLA_FAULTS = """
import resource, jax, jax.numpy as jnp
x = jnp.ones((64 * 2**20 // 4,))
f = jax.jit(lambda x: jnp.cumsum(jnp.concatenate([x, x * 2]))[::7].sum())
assert f.lower(x).compile().memory_analysis().temp_size_in_bytes >= 2**28
for i in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    if i:
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
_PAGES = 256 * 2**20 // 4096
_HUGE_HERE = "glibc.malloc.hugetlb=1" in (malloc_tuning.tuned_env({}) or {}).get("GLIBC_TUNABLES", "")
_REUSE_HERE = malloc_tuning.tuned_env({}) is not None
_PLAIN = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", malloc_tuning.OPT_OUT)}


def test_tunables_added_alone_or_after_existing_ones():
    env = malloc_tuning.tuned_env({"A": "b"}, **_MADVISE_GLIBC)
    assert env == {"A": "b", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:" + _REUSE}
    env = malloc_tuning.tuned_env({"GLIBC_TUNABLES": "glibc.elision.enable=1"}, **_MADVISE_GLIBC)
    assert env["GLIBC_TUNABLES"] == "glibc.elision.enable=1:glibc.malloc.hugetlb=1:" + _REUSE


def test_the_users_own_values_stand_and_only_what_helps_is_added():
    env = malloc_tuning.tuned_env(
        {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0:glibc.malloc.arena_max=4"}, **_MADVISE_GLIBC
    )
    assert env["GLIBC_TUNABLES"] == (
        "glibc.malloc.hugetlb=0:glibc.malloc.arena_max=4:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776"
    )
    for mode, glibc in (("always", (2, 36)), ("never", (2, 36)), ("madvise", (2, 34))):  # no huge-page tunable
        assert malloc_tuning.tuned_env({}, mode=mode, glibc=glibc)["GLIBC_TUNABLES"] == _REUSE


@pytest.mark.parametrize(
    "environ, mode, glibc",
    [
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:" + _REUSE}, "madvise", (2, 36)),  # all set already
        ({"GLIBC_TUNABLES": _REUSE}, "never", (2, 36)),  # all that helps here is set
        ({"JAXTAR_MALLOC_TUNING": "0"}, "madvise", (2, 36)),  # opted out
        ({}, "madvise", (2, 25)),  # glibc without tunables
        ({}, None, None),  # not Linux / not glibc
    ],
)
def test_no_reexec_where_nothing_helps_or_all_is_decided(environ, mode, glibc):
    assert malloc_tuning.tuned_env(environ, mode=mode, glibc=glibc) is None


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert malloc_tuning.thp_mode(str(f)) == "madvise"
    assert malloc_tuning.thp_mode(str(tmp_path / "missing")) is None


def _run(code: str, env: dict[str, str]) -> list[int]:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return [int(line) for line in out.stdout.split()]


@pytest.mark.skipif(not _REUSE_HERE, reason="needs glibc >= 2.26")
def test_freed_blocks_are_reused_without_faults():
    first, second = _run(_FAULTS, _PLAIN)
    assert first > 0.9 * _PAGES and second > 0.9 * _PAGES  # one fault per 4 KiB page, every time
    first, second = _run(_FAULTS, malloc_tuning.tuned_env(_PLAIN))
    limit = 0.05 * _PAGES if _HUGE_HERE else 1.1 * _PAGES
    assert first < limit  # with 2 MiB pages ~1/512 of the 4 KiB faults, plus the process's own noise
    assert second < 0.01 * _PAGES  # the heap kept the freed block: already mapped


@pytest.mark.skipif(not _REUSE_HERE, reason="needs glibc >= 2.26")
def test_xla_calls_reuse_their_buffers():
    plain = _run(_XLA_FAULTS, {**_PLAIN, "JAX_PLATFORMS": "cpu"})
    tuned = _run(_XLA_FAULTS, {**malloc_tuning.tuned_env(_PLAIN), "JAX_PLATFORMS": "cpu"})
    assert statistics.median(plain) > 0.5 * _PAGES  # the temporary buffer faulted in afresh on every call
    assert statistics.median(tuned) < 0.01 * _PAGES  # measured 0 on most calls


@pytest.mark.skipif(not _REUSE_HERE, reason="needs glibc >= 2.26")
def test_cli_reexecutes_itself_with_the_tunables_unless_opted_out():
    cmd = [sys.executable, "-m", "jaxtar.cli", "info"]
    on = subprocess.run(cmd, env=_PLAIN, capture_output=True, text=True, check=True).stdout
    off = subprocess.run(cmd, env={**_PLAIN, "JAXTAR_MALLOC_TUNING": "0"}, capture_output=True, text=True, check=True)
    assert "buffer reuse: on (glibc.malloc.mmap_max=0, arena_max=1)" in on
    assert ("huge pages: on (glibc.malloc.hugetlb=1" in on) == _HUGE_HERE
    assert "devices: cpu" in on
    assert "buffer reuse: off" in off.stdout


@pytest.mark.skipif(not _REUSE_HERE, reason="needs glibc >= 2.26")
def test_reexec_keeps_the_interpreter_options_and_arguments():
    code = (
        "import os, sys; from jaxtar.malloc_tuning import reexec_tuned; reexec_tuned(); "
        "print(sys.flags.dev_mode, sys.flags.optimize, os.environ['GLIBC_TUNABLES'].endswith(sys.argv[1]), "
        "sys.argv[2:])"
    )
    cmd = [sys.executable, "-X", "dev", "-O", "-c", code, _REUSE, "b c"]
    out = subprocess.run(cmd, env=_PLAIN, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True 1 True ['b c']"
