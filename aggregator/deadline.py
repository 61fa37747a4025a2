"""When a round or a partial buffer is closed without waiting for more updates.

One policy for the daemon (wall clock) and the simulator (virtual clock): after
``seconds`` without a new version the strategy is flushed, closing a FedAvg round or
a FedBuff buffer that is not filling (devices train once per version, so a buffer of
K cannot fill while fewer than K devices are online). Whether or not the flush made a
version, the clock restarts: an empty round simply waits another full deadline.
The caller owns the clock and passes ``now`` in.
"""

from __future__ import annotations

from collections.abc import Callable


class Deadline:
    def __init__(self, seconds: float | None, now: float) -> None:
        """``seconds=None``: no deadline, the strategy decides alone."""
        self.seconds = seconds
        self.since = now  # the last version, or the last deadline that passed

    def versioned(self, now: float) -> None:
        """A new version exists: the next deadline is ``seconds`` from now."""
        self.since = now

    @property
    def due_at(self) -> float | None:
        return None if self.seconds is None else self.since + self.seconds

    def expired(self, now: float) -> bool:
        due = self.due_at
        return due is not None and now >= due

    def fire(self, now: float, flush: Callable[[], bool]) -> bool:
        """At the deadline: flush; True when that made a version. The clock restarts."""
        produced = flush()
        self.since = now
        return produced
