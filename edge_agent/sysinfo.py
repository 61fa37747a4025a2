"""CPU and memory of this process, from the standard library only (no psutil on a Pi)."""

from __future__ import annotations

import os
import resource
import sys
import time


class ProcessMeter:
    """CPU percent since the previous reading, and resident memory in bytes."""

    def __init__(self) -> None:
        self._last_wall = time.monotonic()
        self._last_cpu = self._cpu()

    @staticmethod
    def _cpu() -> float:
        t = os.times()
        return t.user + t.system

    def cpu_percent(self) -> float:
        wall, cpu = time.monotonic(), self._cpu()
        elapsed = wall - self._last_wall
        pct = 100.0 * (cpu - self._last_cpu) / elapsed if elapsed > 0 else 0.0
        self._last_wall, self._last_cpu = wall, cpu
        return max(pct, 0.0)

    @staticmethod
    def rss_bytes() -> int:
        try:  # current RSS on Linux
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return peak if sys.platform == "darwin" else peak * 1024
