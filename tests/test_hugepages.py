"""glibc's huge-page tunable: when jaxtar adds it, that it really cuts page faults, and that the CLI re-executes."""

import os
import subprocess
import sys

import pytest

from jaxtar.commands import _hugepages as hugepages

_MADVISE_GLIBC = dict(mode="madvise", glibc=(2, 36))
# malloc (not numpy, which advises huge pages itself) 256 MiB, touch every byte, count this process's minor faults.
_FAULTS = """
import ctypes, resource
libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p
n = 256 * 2**20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
ctypes.memset(libc.malloc(n), 1, n)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
_HELPS_HERE = hugepages.hugepage_env({}) is not None


def test_tunable_added_alone_or_after_existing_tunables():
    env = hugepages.hugepage_env({"A": "b"}, **_MADVISE_GLIBC)
    assert env == {"A": "b", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    env = hugepages.hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, **_MADVISE_GLIBC)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize(
    "environ, mode, glibc",
    [
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", (2, 36)),  # the user's own choice stands
        ({"JAXTAR_HUGEPAGES": "0"}, "madvise", (2, 36)),  # opted out
        ({}, "always", (2, 36)),  # the kernel gives huge pages anyway
        ({}, "never", (2, 36)),  # the kernel refuses them
        ({}, "madvise", (2, 34)),  # glibc without the tunable
        ({}, None, None),  # not Linux / not glibc
    ],
)
def test_no_reexec_where_it_cannot_help_or_is_decided(environ, mode, glibc):
    assert hugepages.hugepage_env(environ, mode=mode, glibc=glibc) is None


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert hugepages.thp_mode(str(f)) == "madvise"
    assert hugepages.thp_mode(str(tmp_path / "missing")) is None


def _faults(env: dict[str, str]) -> int:
    out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(not _HELPS_HERE, reason="needs Linux, glibc >= 2.35 and THP in madvise mode")
def test_tunable_cuts_page_faults_of_large_mallocs():
    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    pages = 256 * 2**20 // 4096
    without, with_ = _faults(plain), _faults(hugepages.hugepage_env(plain))
    assert without > 0.9 * pages  # one fault per 4 KiB page
    assert with_ < 0.05 * pages  # 2 MiB pages: ~1/512 of that, plus the process's own noise


@pytest.mark.skipif(not _HELPS_HERE, reason="needs Linux, glibc >= 2.35 and THP in madvise mode")
def test_cli_reexecutes_itself_with_the_tunable_unless_opted_out():
    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    cmd = [sys.executable, "-m", "jaxtar.cli", "info"]
    on = subprocess.run(cmd, env=plain, capture_output=True, text=True, check=True).stdout
    off = subprocess.run(cmd, env={**plain, "JAXTAR_HUGEPAGES": "0"}, capture_output=True, text=True, check=True)
    assert "huge pages: on (glibc.malloc.hugetlb=1" in on
    assert "devices: cpu" in on
    assert "huge pages: off" in off.stdout


@pytest.mark.skipif(not _HELPS_HERE, reason="needs Linux, glibc >= 2.35 and THP in madvise mode")
def test_reexec_keeps_the_interpreter_options_and_arguments():
    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    code = (
        "import os, sys; from jaxtar.commands._hugepages import reexec_with_hugepages; reexec_with_hugepages(); "
        "print(sys.flags.dev_mode, sys.flags.optimize, os.environ['GLIBC_TUNABLES'], sys.argv[1:])"
    )
    cmd = [sys.executable, "-X", "dev", "-O", "-c", code, "a", "b c"]
    out = subprocess.run(cmd, env=plain, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True 1 glibc.malloc.hugetlb=1 ['a', 'b c']"
