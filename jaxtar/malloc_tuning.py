"""glibc ``malloc`` tunables for XLA's CPU buffers: 2 MiB pages, and freed buffers kept for the next call.

On CPU, XLA allocates every call's temporary buffer afresh with ``malloc`` and frees it at the end. Large blocks
come from ``mmap`` and go back to the kernel on ``free``, so each call page-faults its whole working set in again
and the kernel zeroes it: 1.7 GB in ~440k faults of 4 KiB for one exact meta-gradient of the d=256 benchmark model
at K=4. Two sets of tunables fix this:

- huge pages, ``glibc.malloc.hugetlb=1`` (glibc >= 2.35, kernel THP in ``madvise`` mode, the common default):
  glibc advises its mappings to use 2 MiB pages, 512x fewer faults and fewer TLB misses in the matmuls;
- buffer reuse, ``glibc.malloc.mmap_max=0``, ``arena_max=1`` and a 1 TiB ``trim_threshold`` (glibc >= 2.26): large
  blocks come from the one heap and stay mapped after ``free``, so the next call reuses already-faulted memory and
  takes no faults at all. The price is that the process keeps its peak memory until it exits (resident peak
  measured ~10 % higher on the benchmark, from fragmentation) and that all threads share one malloc arena.

glibc reads tunables once at process start, so they cannot be switched on from inside Python: the ``jaxtar``
command re-executes itself with them (`reexec_tuned`), and a notebook or script is started with the variable
`tuned_env` builds, e.g. ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.arena_max=1:``
``glibc.malloc.trim_threshold=1099511627776 jupyter lab``. ``JAXTAR_MALLOC_TUNING=0`` turns the re-execution off; a
tunable the user set already is kept as it is.

Example:
    >>> env = tuned_env({"PATH": "/bin"}, mode="madvise", glibc=(2, 36))
    >>> env["GLIBC_TUNABLES"].split(":")[:2]
    ['glibc.malloc.hugetlb=1', 'glibc.malloc.mmap_max=0']
    >>> tuned_env(env, mode="madvise", glibc=(2, 36)) is None  # already set
    True
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

HUGE_PAGES = {"glibc.malloc.hugetlb": "1"}
BUFFER_REUSE = {
    "glibc.malloc.mmap_max": "0",  # no block gets its own mapping (that would be unmapped on free) ...
    "glibc.malloc.arena_max": "1",  # ... including blocks that XLA's worker threads allocate ...
    "glibc.malloc.trim_threshold": str(2**40),  # ... and the heap never shrinks back to the kernel.
}
OPT_OUT = "JAXTAR_MALLOC_TUNING"
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


def _tunables(environ: Mapping[str, str]) -> dict[str, str]:
    items = (item.partition("=") for item in environ.get("GLIBC_TUNABLES", "").split(":") if item)
    return {name: value for name, _, value in items}


def _wanted(mode: str | None, glibc: tuple[int, int] | None) -> dict[str, str]:
    """The tunables that help on this kernel and C library (none off glibc or before 2.26, which has no tunables)."""
    if glibc is None or glibc < (2, 26):
        return {}
    huge = HUGE_PAGES if mode == "madvise" and glibc >= (2, 35) else {}
    return {**huge, **BUFFER_REUSE}


def status(environ: Mapping[str, str] | None = None) -> str:
    """One line saying whether this process's large ``malloc`` blocks get huge pages and are reused (for reports)."""
    environ = os.environ if environ is None else environ
    mode, glibc, set_ = thp_mode(), glibc_version(), _tunables(environ)
    if mode is None or glibc is None:
        return "huge pages: n/a, buffer reuse: n/a (not Linux with glibc)"
    if mode in ("always", "never"):
        huge = f"{'on' if mode == 'always' else 'off'} (kernel THP mode '{mode}')"
    elif set_.get("glibc.malloc.hugetlb") in ("1", "2"):
        huge = f"on (glibc.malloc.hugetlb={set_['glibc.malloc.hugetlb']}, kernel THP mode 'madvise')"
    else:
        huge = "off (kernel THP mode 'madvise' without glibc.malloc.hugetlb=1)"
    reuse_on = set_.get("glibc.malloc.mmap_max") == "0" and set_.get("glibc.malloc.arena_max") == "1"
    reuse = "on (glibc.malloc.mmap_max=0, arena_max=1)" if reuse_on else "off"
    return f"huge pages: {huge}; buffer reuse: {reuse}"


def tuned_env(
    environ: Mapping[str, str] | None = None,
    *,
    mode: str | None = "machine",
    glibc: tuple[int, int] | None | str = "machine",
) -> dict[str, str] | None:
    """``environ`` with the helpful tunables added, or None where all are set already, opted out or none can help.

    Huge pages need Linux with glibc >= 2.35 and THP in ``madvise`` mode (``always`` needs nothing, ``never``
    ignores them); buffer reuse needs glibc >= 2.26. A tunable already in ``GLIBC_TUNABLES`` keeps its value.
    ``mode`` and ``glibc`` (None: not Linux / not glibc) default to this machine's.

    Example:
        >>> tuned_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}, mode="never", glibc=(2, 31))["GLIBC_TUNABLES"]
        'glibc.malloc.arena_max=4:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776'
    """
    environ = dict(os.environ if environ is None else environ)
    mode = thp_mode() if mode == "machine" else mode
    glibc = glibc_version() if glibc == "machine" else glibc
    if environ.get(OPT_OUT, "1") == "0":
        return None
    present = _tunables(environ)
    missing = [f"{name}={value}" for name, value in _wanted(mode, glibc).items() if name not in present]
    if not missing:
        return None
    previous = environ.get("GLIBC_TUNABLES", "")
    environ["GLIBC_TUNABLES"] = ":".join([previous, *missing] if previous else missing)
    return environ


def reexec_tuned(argv: Sequence[str] | None = None) -> None:
    """Replace this process by ``python *argv`` with the tunables set; returns (does nothing) where not needed.

    ``argv`` defaults to this process's own command line as the interpreter saw it (``sys.orig_argv``), so
    interpreter options such as ``-X dev`` or ``-W error`` survive the restart. Call it first thing in a
    command-line entry point, before any work: the process image is replaced.
    """
    env = tuned_env()
    if env is None:
        return
    argv = sys.orig_argv[1:] if argv is None else argv
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv], env)
