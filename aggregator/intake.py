"""The one intake engine: (topic, payload) in, an ``Outcome`` out.

Synchronous and single-threaded by design: the daemon runs it on one worker thread,
in message order, and the simulator calls it directly on its virtual clock. It owns
everything an update meets on its way in: the validator (topic, codec, identity,
dedupe), the strategy with its defences, the ledger (optional) and the counters. No
asyncio, no MQTT, no clock of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from aggregator.counters import Counters
from aggregator.ledger import Ledger
from aggregator.privacy import PrivacyLedger
from aggregator.strategies import Strategy
from aggregator.validation import Validator, to_contribution
from fedmq.errors import UpdateRejected
from fedmq.model import Arch, Weights
from fedmq.topics import Topics
from fedmq.wire import MAX_BYTES, DeviceLedger, Update

log = logging.getLogger("fedmq.aggregator")


@dataclass(frozen=True)
class Outcome:
    """What one update (or one deadline flush) did."""

    applied: bool
    new_version: bool
    version: int  # the global version after it
    device: str | None = None
    reason: str | None = None  # why it was rejected; None when it was not
    staleness: int | None = None  # of an applied update
    message: str = ""

    @property
    def rejected(self) -> bool:
        return self.reason is not None


@dataclass(frozen=True)
class Snapshot:
    """A consistent view of the intake's state, taken between two updates."""

    version: int
    weights: Weights  # strategies replace their weights on each version, never mutate them
    strategy: str
    params: dict[str, Any]
    accepted: int
    rejected: dict[str, int]
    bytes_in: int
    ledgers: list[DeviceLedger] = field(default_factory=list)
    epsilon: float | None = None  # the fleet's DP ε; None without DP


class Intake:
    def __init__(
        self,
        topics: Topics,
        arch: Arch,
        strategy: Strategy,
        *,
        max_update_bytes: int = MAX_BYTES,
        ledger: Ledger | None = None,
        noise: float = 0.0,
        dp_delta: float = 1e-5,
        log: logging.Logger = log,
    ) -> None:
        self.arch = arch
        # Client-level DP: with noise z > 0 each accepted update is one Gaussian
        # mechanism on its device's data (the devices clip to C and add z·C noise).
        self.noise = noise
        self.privacy = PrivacyLedger(dp_delta) if noise > 0 else None
        self.strategy = strategy
        self.validator = Validator(topics, arch, max_bytes=max_update_bytes)
        self.counters = Counters(log)  # rejections are logged there
        self.ledger = ledger
        if ledger is not None:
            self._resume(ledger)

    def _resume(self, ledger: Ledger) -> None:
        """Continue from the ledger: last checkpoint, then replay what came after it."""
        # The ledger refuses a checkpoint of another strategy or model (ledger_mismatch).
        saved, events = ledger.restore(self.strategy)
        if saved is None:
            ledger.checkpoint(self.strategy)  # fixes the starting weights for replays
            return
        if saved.params() != self.strategy.params():
            log.warning("resuming with the ledger's settings %s", saved.params())
        self.strategy = saved
        shapes = self.arch.param_shapes()
        for event in events:
            if event.kind == "flush":
                self.strategy.flush()
            else:
                update = Update.decode(event.payload or b"", shapes=shapes, max_bytes=2**31)
                self.strategy.apply(to_contribution(update))
        if self.privacy is not None:
            self.privacy.load(ledger.privacy())
        self.validator.last_seq = ledger.last_seqs()
        self.counters.accepted, self.counters.rejected = ledger.counts()
        log.info(
            "resumed %s at version %d (%d events replayed)",
            self.strategy.name,
            self.strategy.version,
            len(events),
        )

    def handle(self, topic: str, payload: bytes) -> Outcome:
        """Validate and apply one update; its ledger record is committed before this returns."""
        self.counters.bytes_in += len(payload)
        try:
            update, contribution = self.validator.check(topic, payload)
        except UpdateRejected as exc:
            return self._reject(exc, seq=None)
        self.validator.seen(update.device, update.seq)
        staleness = self.strategy.version - update.base_version
        try:
            produced = self.strategy.apply(contribution)
        except UpdateRejected as exc:
            return self._reject(exc, seq=update.seq)
        if self.ledger is not None:
            self.ledger.record(
                self.strategy,
                "applied",
                device=update.device,
                seq=update.seq,
                staleness=staleness,
                samples=update.num_samples,
                payload=payload,
                noise=None if self.privacy is None else self.noise,
            )
        if self.privacy is not None:
            self.privacy.spend(update.device, self.noise)
        self.counters.accept(update.device, update.seq, staleness, update.num_samples)
        return Outcome(
            True, produced, self.strategy.version, device=update.device, staleness=staleness
        )

    def _reject(self, exc: UpdateRejected, seq: int | None) -> Outcome:
        self.counters.reject(exc.reason, exc.message, exc.device)
        # A redelivered or replayed seq keeps the one record it already has.
        if self.ledger is not None and exc.reason not in ("duplicate_seq", "old_seq"):
            self.ledger.record(
                self.strategy,
                "rejected",
                device=exc.device,
                seq=seq,
                reason=exc.reason,
                staleness=exc.staleness,
            )
        return Outcome(
            False,
            False,
            self.strategy.version,
            device=exc.device,
            reason=exc.reason,
            message=exc.message,
        )

    def flush(self) -> Outcome:
        """The deadline flush (see ``aggregator.deadline``): close what is pending."""
        produced = self.strategy.flush()
        if produced and self.ledger is not None:
            self.ledger.record(self.strategy, "flush")
        return Outcome(False, produced, self.strategy.version)

    def snapshot(self, *, ledgers: bool = False) -> Snapshot:
        """The state to publish; ``ledgers`` also takes the device ledgers changed since."""
        c = self.counters
        p = self.privacy
        changed = [
            c.ledger(d, epsilon=None if p is None else p.epsilon(d)) for d in sorted(c.dirty)
        ] if ledgers else []  # fmt: skip
        if ledgers:
            c.dirty.clear()
        return Snapshot(
            version=self.strategy.version,
            weights=self.strategy.weights,
            strategy=self.strategy.name,
            params=self.strategy.params(),
            accepted=c.accepted,
            rejected=dict(c.rejected),
            bytes_in=c.bytes_in,
            ledgers=changed,
            epsilon=None if p is None else p.fleet_epsilon(),
        )

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
