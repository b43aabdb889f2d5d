"""How many CPUs this process may use: the size of its pools of worker threads."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may run on (a container's or taskset's limit where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
