"""Rejections in the log: each names the device and the reason, rate-limited per reason.

A misbehaving device (or an attacker) can send thousands of bad updates a minute; each
must not become a log line. Per reason, the first ``burst`` rejections of a ``window``
are logged one by one; the rest are counted, by device, and summarised in one line
when the window has passed (``flush``, which the daemon calls with its progress line)
or when the aggregator stops (``flush(final=True)``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

WINDOW_S = 60.0
BURST = 3
# A refused candidate model is one line a minute (a gate that fires is news; its repeats
# are not): issue 10's rule.
BURSTS = {"model_rejected": 1}
NAMED = 3  # devices named in a summary, most frequent first


@dataclass
class _Window:
    start: float
    logged: int = 0
    suppressed: Counter = field(default_factory=Counter)  # device -> rejections not logged


class RejectionLog:
    def __init__(
        self,
        log: logging.Logger,
        *,
        window: float = WINDOW_S,
        burst: int = BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log, self.window, self.burst, self.clock = log, window, burst, clock
        self._windows: dict[str, _Window] = {}

    def note(self, reason: str, device: str | None, message: str) -> None:
        now = self.clock()
        w = self._windows.get(reason)
        if w is None or now - w.start >= self.window:
            if w is not None:
                self._summarise(reason, w, now)
            w = self._windows[reason] = _Window(start=now)
        if w.logged < BURSTS.get(reason, self.burst):
            w.logged += 1
            self.log.warning("rejected update from %s [%s]: %s", device or "?", reason, message)
        else:
            w.suppressed[device or "?"] += 1

    def flush(self, *, final: bool = False) -> None:
        """Summarise every reason whose window has passed (``final``: every reason)."""
        now = self.clock()
        for reason, w in list(self._windows.items()):
            if final or now - w.start >= self.window:
                self._summarise(reason, w, now)
                del self._windows[reason]

    def _summarise(self, reason: str, w: _Window, now: float) -> None:
        total = sum(w.suppressed.values())
        if not total:
            return
        top = ", ".join(f"{d} ({n})" for d, n in w.suppressed.most_common(NAMED))
        others = len(w.suppressed) - NAMED
        more = f" and {others} other device(s)" if others > 0 else ""
        self.log.warning(
            "rejected %d more update(s) [%s] in %.0fs, not logged one by one: from %s%s",
            total,
            reason,
            max(now - w.start, 0.0),
            top,
            more,
        )
