"""What the benchmarks may use of this machine (standard library only)."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may run on: honours ``taskset`` / cgroup affinity, unlike ``os.cpu_count()``.

    Example:
        >>> usable_cores() >= 1
        True
    """
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
