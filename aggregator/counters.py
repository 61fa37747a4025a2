"""Counts of what the aggregator accepted and refused, per reason and per device."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from fedmq.wire import DeviceLedger


@dataclass
class _DeviceCounts:
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    last_seq: int = -1
    last_staleness: int = -1
    samples: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0


class Counters:
    """Fleet-wide and per-device tallies; rejections are logged once per reason per minute."""

    def __init__(self, log: logging.Logger, log_every: float = 60.0) -> None:
        self.log = log
        self.log_every = log_every
        self.accepted = 0
        self.rejected: Counter = Counter()
        self.bytes_in = 0
        self.devices: dict[str, _DeviceCounts] = {}
        self.dirty: set[str] = set()  # devices whose ledger changed since last published
        self._last_logged: dict[str, float] = {}
        self._suppressed: Counter = Counter()

    def _device(self, device: str) -> _DeviceCounts:
        now = time.time()
        d = self.devices.setdefault(device, _DeviceCounts(first_seen=now))
        d.last_seen = now
        self.dirty.add(device)
        return d

    def accept(self, device: str, seq: int, staleness: int, samples: int) -> None:
        self.accepted += 1
        d = self._device(device)
        d.accepted += 1
        d.last_seq = max(d.last_seq, seq)
        d.last_staleness = staleness
        d.samples += samples

    def reject(self, reason: str, message: str, device: str | None = None) -> None:
        self.rejected[reason] += 1
        if device is not None:
            self._device(device).rejected[reason] += 1
        now = time.monotonic()
        if now - self._last_logged.get(reason, -float("inf")) >= self.log_every:
            more = self._suppressed.pop(reason, 0)
            extra = f" (+{more} more since last report)" if more else ""
            self.log.warning("rejected update [%s]: %s%s", reason, message, extra)
            self._last_logged[reason] = now
        else:
            self._suppressed[reason] += 1

    def ledger(self, device: str, epsilon: float | None = None) -> DeviceLedger:
        d = self.devices[device]
        return DeviceLedger(
            device=device,
            accepted=d.accepted,
            rejected=dict(d.rejected),
            last_seq=d.last_seq,
            last_staleness=None if d.last_staleness < 0 else d.last_staleness,
            samples=d.samples,
            first_seen=d.first_seen,
            last_seen=d.last_seen,
            epsilon=epsilon,
        )
