"""The aggregator's progress line: one INFO line at most every ``interval`` seconds.

It says what an operator tailing the journal wants to know: the version, the last
evaluation, how many updates per second were accepted since the previous line and how
many devices are online. An idle aggregator (nothing changed) writes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class Progress:
    def __init__(
        self,
        log: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        accepted: int = 0,
    ) -> None:
        """``accepted``: the count at the start (a resumed ledger's), the rate's baseline."""
        self.log, self.interval, self.clock = log, interval, clock
        self._at = clock()  # the first line comes one interval after the start, too
        self._accepted = accepted
        self._said: tuple | None = None

    def due_in(self) -> float:
        """Seconds until a line may be written."""
        return max(0.0, self._at + self.interval - self.clock())

    def tick(self, version: int, accuracy: float | None, accepted: int, online: int) -> bool:
        """Write the line if one is due and something changed; True when it was written."""
        now = self.clock()
        if now - self._at < self.interval:
            return False
        rate = (accepted - self._accepted) / (now - self._at)
        self._at, self._accepted = now, accepted
        state = (version, accuracy, accepted, online)
        if state == self._said:
            return False
        self._said = state
        acc = "-" if accuracy is None else f"{accuracy:.4f}"
        self.log.info(
            "progress: version %d, accuracy %s, %.1f updates/s, %d device(s) online",
            version,
            acc,
            rate,
            online,
        )
        return True
