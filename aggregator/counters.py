"""Counts of what the aggregator accepted and refused, per reason and per device."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from aggregator.rejections import RejectionLog
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
    """Fleet-wide and per-device tallies; rejections are logged through ``RejectionLog``."""

    def __init__(self, log: logging.Logger) -> None:
        self.rejections = RejectionLog(log)
        self.accepted = 0
        self.rejected: Counter = Counter()
        self.bytes_in = 0
        self.devices: dict[str, _DeviceCounts] = {}
        self.dirty: set[str] = set()  # devices whose ledger changed since last published

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

    def reject(
        self, reason: str, message: str, device: str | None = None, seq: int | None = None
    ) -> None:
        """Count a refusal; ``seq`` when the update passed dedupe and its seq is now spent.

        A device ledger's ``last_seq`` is what a restarted agent resyncs to, so it must
        cover refused seqs too: the validator refuses any seq at or below them.
        """
        self.rejected[reason] += 1
        if device is not None:
            d = self._device(device)
            d.rejected[reason] += 1
            if seq is not None:
                d.last_seq = max(d.last_seq, seq)
        self.rejections.note(reason, device, message)

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
