"""Shared by the benchmarks (standard library only): the cores this process may use, and steady-state timing."""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def usable_cores() -> int:
    """Cores this process may run on: honours ``taskset`` / cgroup affinity, unlike ``os.cpu_count()``.

    Example:
        >>> usable_cores() >= 1
        True
    """
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def second_call_seconds(fn: Callable[[], object]) -> float:
    """Wall-clock of the second of two back-to-back calls of ``fn``: the steady state of a loop that calls it.

    With glibc's huge-page tunable on (``jaxtar.commands._hugepages``), a jitted program's first call after other
    work (another program, the other framework's call) was 1.2-1.6x slower here than its second, so interleaved
    side-by-side timings time the second call of each (docs/benchmarks.md: TAR outer step).

    Example:
        >>> second_call_seconds(lambda: sum(range(10))) >= 0.0
        True
    """
    fn()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
