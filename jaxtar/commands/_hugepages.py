"""Transparent huge pages for XLA's CPU buffers, through glibc's ``glibc.malloc.hugetlb`` tunable.

On CPU, XLA allocates every call's temporary buffer afresh with ``malloc``. Large blocks come from ``mmap``, so
each call page-faults its whole working set in again, 4 KiB at a time: 1.7 GB and ~440k faults for one exact
meta-gradient of the d=256 benchmark model at K=4. Where the kernel's transparent huge pages are in ``madvise``
mode (the common default), glibc >= 2.35 advises its mappings to use 2 MiB pages when started with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``: 512x fewer faults and fewer TLB misses in the matmuls. The tunable is
read once at process start, so it cannot be switched on from inside Python; the ``jaxtar`` command re-executes
itself with it (`reexec_with_hugepages`), and a notebook or script is started with it, e.g.
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1 jupyter lab``. ``JAXTAR_HUGEPAGES=0`` turns the re-execution off.

Example:
    >>> env = hugepage_env({"PATH": "/bin"}, mode="madvise", glibc=(2, 36))
    >>> env["GLIBC_TUNABLES"]
    'glibc.malloc.hugetlb=1'
    >>> hugepage_env(env, mode="madvise", glibc=(2, 36)) is None  # already set
    True
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "JAXTAR_HUGEPAGES"
_THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = _THP_ENABLED) -> str | None:
    """The kernel's transparent-huge-page mode (``always``, ``madvise`` or ``never``); None off Linux."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    words = [w[1:-1] for w in text.split() if w.startswith("[") and w.endswith("]")]
    return words[0] if words else None


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library this process runs on, or None when it is not glibc."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # e.g. "glibc 2.36"
    except (AttributeError, ValueError, OSError):
        return None
    parts = version.split(".")
    return (int(parts[0]), int(parts[1])) if name == "glibc" and len(parts) >= 2 else None


def _tunable_value(environ: Mapping[str, str]) -> str | None:
    for item in environ.get("GLIBC_TUNABLES", "").split(":"):
        name, _, value = item.partition("=")
        if name == TUNABLE:
            return value
    return None


def status(environ: Mapping[str, str] | None = None) -> str:
    """One line saying whether this process's large ``malloc`` blocks get huge pages, and why (for reports)."""
    environ = os.environ if environ is None else environ
    mode, glibc, value = thp_mode(), glibc_version(), _tunable_value(environ)
    if mode is None or glibc is None:
        return "huge pages: n/a (not Linux with glibc)"
    if mode == "always":
        return "huge pages: on (kernel THP mode 'always')"
    if mode == "never":
        return "huge pages: off (kernel THP mode 'never')"
    if value in ("1", "2"):
        return f"huge pages: on ({TUNABLE}={value}, kernel THP mode 'madvise')"
    return f"huge pages: off (kernel THP mode 'madvise' without {TUNABLE}=1)"


def hugepage_env(
    environ: Mapping[str, str] | None = None,
    *,
    mode: str | None = "machine",
    glibc: tuple[int, int] | None | str = "machine",
) -> dict[str, str] | None:
    """``environ`` with glibc's huge-page tunable added, or None where it is set already, opted out or cannot help.

    It helps only on Linux with glibc >= 2.35 and THP in ``madvise`` mode (``always`` needs nothing, ``never``
    ignores it). ``mode`` and ``glibc`` (None: not Linux / not glibc) default to this machine's.
    """
    environ = dict(os.environ if environ is None else environ)
    mode = thp_mode() if mode == "machine" else mode
    glibc = glibc_version() if glibc == "machine" else glibc
    if environ.get(OPT_OUT, "1") == "0" or mode != "madvise" or glibc is None or glibc < (2, 35):
        return None
    if _tunable_value(environ) is not None:
        return None
    previous = environ.get("GLIBC_TUNABLES", "")
    environ["GLIBC_TUNABLES"] = f"{previous}:{TUNABLE}=1" if previous else f"{TUNABLE}=1"
    return environ


def reexec_with_hugepages(argv: Sequence[str] | None = None) -> None:
    """Replace this process by ``python *argv`` with the tunable set; returns (does nothing) where not needed.

    ``argv`` defaults to this process's own command line as the interpreter saw it (``sys.orig_argv``), so
    interpreter options such as ``-X dev`` or ``-W error`` survive the restart. Call it first thing in a
    command-line entry point, before any work: the process image is replaced.
    """
    env = hugepage_env()
    if env is None:
        return
    argv = sys.orig_argv[1:] if argv is None else argv
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv], env)
