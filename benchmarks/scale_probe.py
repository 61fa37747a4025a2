"""What the ``scale`` benchmark reads off the processes it runs: /proc, /metrics, the ledger."""

from __future__ import annotations

import math
import os
import sqlite3
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


class ProcSampler:
    """CPU time and resident set of one process, from ``/proc/PID``."""

    def __init__(self, pid: int | None) -> None:
        if pid is None:
            raise RuntimeError("no such process")
        self.pid = pid
        self.rss_samples: list[int] = []
        self._start: tuple[float, float] | None = None
        self._last: tuple[float, float] | None = None

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _cpu(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime

    def start(self) -> None:
        self._start = (time.monotonic(), self._cpu())
        self.rss_samples = [self.rss()]

    def sample(self) -> None:
        self._last = (time.monotonic(), self._cpu())
        self.rss_samples.append(self.rss())

    def cpu_percent(self) -> float:
        """CPU over the window in % of one core."""
        if self._start is None or self._last is None:
            return math.nan
        wall = self._last[0] - self._start[0]
        return round(100 * (self._last[1] - self._start[1]) / max(wall, 1e-9), 1)

    def peak_rss(self) -> int:
        return max(self.rss_samples, default=0)

    def peak_rss_mb(self) -> float:
        return round(self.peak_rss() / 2**20, 1)


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (Prometheus text)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        series, _, rest = head.partition("{")
        if series != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += float(value)
    return total


def applied_staleness(ledger: Path, t0: float, t1: float) -> dict[str, float]:
    """Staleness of the updates applied between ``t0`` and ``t1`` (the ledger keeps the
    newest 10,000 events unfolded; more than that in the window: the newest of them)."""
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as db:
        rows = [
            r[0]
            for r in db.execute(
                "SELECT staleness FROM events WHERE kind = 'applied' AND at BETWEEN ? AND ? "
                "AND staleness IS NOT NULL ORDER BY staleness",
                (t0, t1),
            )
        ]
    if not rows:
        return {"mean": math.nan, "p90": math.nan, "n": 0}
    p90 = rows[min(len(rows) - 1, math.ceil(0.9 * len(rows)) - 1)]
    return {"mean": round(sum(rows) / len(rows), 3), "p90": p90, "n": len(rows)}
