"""Noticing a broker whose in-flight window is too small for chunked updates.

The inbox acknowledges a chunk only once its whole message is resolved, so it holds
chunks unacknowledged (up to ``MAX_HELD_CHUNKS``). A broker sends a client at most its
in-flight window of unacknowledged QoS 1 messages (Mosquitto: ``max_inflight_messages``,
20 by default); when the chunks held fill that window, the broker stops delivering,
the partial messages can never complete, and they time out as ``chunk_missing`` with
nothing to tell the operator why. ``WindowStalls`` tells that apart from a device that
died mid-update: there, the rest of the fleet's traffic keeps arriving; in a stall,
the broker fell silent while several partial messages were held, and they timed out
in that silence.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

# The silence must cover most of chunk_timeout, not all of it: a partial's timeout
# runs from its first chunk, and the broker falls silent only after the chunks that
# filled its window, which may come a little later.
SILENCE = 0.75


class WindowStalls:
    """Counts stalls of the broker's in-flight window; logs one warning for each.

    ``heard`` after each delivery of QoS 1 messages (QoS 0 ones pass a full window),
    ``timed_out`` when the sweep refuses partial messages as ``chunk_missing``.
    """

    def __init__(
        self,
        timeout: float,
        held_max: int,
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout, self.held_max, self.log, self.clock = timeout, held_max, log, clock
        self.count = 0  # stalls seen since start
        self.heard(0, 0)

    def heard(self, partials: int, chunks: int) -> None:
        """The broker delivered; after it the inbox holds ``chunks`` chunks of
        ``partials`` partial messages. Once per batch: the intake's hot path."""
        self._heard_at = self.clock()
        self._partials, self._chunks = partials, chunks
        self._told = False  # a new silence may be a new stall

    def timed_out(self) -> bool:
        """Partial messages just timed out: True when that makes a stall (the first
        time in this silence), which is then logged and counted."""
        silence = self.clock() - self._heard_at
        if self._told or self._partials < 2 or silence < SILENCE * self.timeout:
            return False
        self._told = True
        self.count += 1
        self.log.warning(
            "the broker delivered nothing for %.1f s while %d chunks of %d partial updates "
            "were held unacknowledged, so they timed out (chunk_missing): its in-flight "
            "window for the aggregator (Mosquitto: max_inflight_messages) is probably "
            "below %d chunks; set max_inflight_messages above %d (stall %d since start)",
            silence,
            self._chunks,
            self._partials,
            self.held_max,
            self.held_max,
            self.count,
        )
        return True
