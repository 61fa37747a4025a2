"""The aggregator's history: history.jsonl on its disk, and the recent part for the broker.

history.jsonl keeps one line per published version (the publisher publishes at most
one version per ``publish_interval``) and is bounded by rotation: past
``HISTORY_MAX_BYTES`` it moves to history.jsonl.1 (then .2, up to ``HISTORY_KEEP``).
``Recent`` keeps the last ``MAX_POINTS`` of the run for the retained
``fl/{fleet}/aggregator/history`` summary (``fedmq.history``), so an operator can plot
the run without the aggregator's disk.
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any

from fedmq.history import MAX_POINTS, HistorySummary

HISTORY_MAX_BYTES = 8 * 1024 * 1024
HISTORY_KEEP = 3


class History:
    """Append-only JSON lines, fsynced, rotated by size."""

    def __init__(self, path: Path, max_bytes: int = HISTORY_MAX_BYTES, keep: int = HISTORY_KEEP):
        self.path, self.max_bytes, self.keep = path, max_bytes, keep

    def append(self, line: dict) -> None:
        if self.path.exists() and self.path.stat().st_size >= self.max_bytes:
            self._rotate()
        with self.path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _rotate(self) -> None:
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))


def read_history(out_dir: Path) -> list[dict[str, Any]]:
    """history.jsonl and its rotated parts, oldest first; damaged lines are skipped."""
    parts = [p for p in out_dir.glob("history.jsonl.*") if p.suffix[1:].isdigit()]
    parts = [*sorted(parts, key=lambda p: -int(p.suffix[1:])), out_dir / "history.jsonl"]
    rows = []
    for part in parts:
        if not part.is_file():
            continue
        for line in part.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("version"), int):
                rows.append(row)
    return rows


def point(line: dict[str, Any]) -> dict[str, Any]:
    """A history.jsonl line as a summary point."""
    keys = ("version", "time", "accuracy", "loss")
    return {**{k: line.get(k) for k in keys}, "accepted": line.get("updates_applied", 0)}


class Recent:
    """The run's last ``MAX_POINTS`` versions, and whether the broker has seen them.

    Added to from the evaluation thread, read from the event loop: hence the lock.
    """

    def __init__(self, run: str, out_dir: Path | None = None) -> None:
        self.run = run
        self._lock = threading.Lock()
        self.points: deque[dict[str, Any]] = deque(maxlen=MAX_POINTS)
        self.changed = False
        # A restart of the same run (a resumed ledger) continues its summary.
        for line in read_history(out_dir) if out_dir is not None else ():
            if line.get("run") == run:
                self.add(line)

    def add(self, line: dict[str, Any]) -> None:
        with self._lock:
            if self.points and line["version"] <= self.points[-1]["version"]:
                return  # versions only increase within a run
            self.points.append(point(line))
            self.changed = True

    def summary(self, at: float) -> HistorySummary:
        with self._lock:
            self.changed = False
            return HistorySummary.from_points(self.run, list(self.points), at)
