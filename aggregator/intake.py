"""The one intake engine: (topic, payload) in, an ``Outcome`` out.

Synchronous and single-threaded by design: the daemon runs it on one worker thread,
in message order, and the simulator calls it directly on its virtual clock. It owns
everything an update meets on its way in: the validator (topic, codec, identity,
dedupe), the strategy with its defences, the gate on every candidate model, the
ledger (optional) and the counters. No asyncio, no MQTT, no clock of its own.

A candidate the gate refuses (``model_rejected``) takes what was pending with it (see
``Strategy``). The ledger records that as a ``discard`` event, and a replay calls
``Strategy.discard_pending`` for it, so a restart reproduces the refusal exactly. The
replay itself runs ungated: it repeats decisions already made.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aggregator.counters import Counters
from aggregator.ledger import Ledger
from aggregator.privacy import PrivacyLedger
from aggregator.standardize import Standardization
from aggregator.stats_store import StatsStore
from aggregator.strategies import Contribution, ModelGate, Strategy
from aggregator.validation import Validator, to_contribution
from fedmq.errors import FedmqError, TopicError, UpdateRejected
from fedmq.featurestats import FeatureStats
from fedmq.model import Arch, Weights
from fedmq.preprocess import Standardizer, reparameterize
from fedmq.topics import Topics, parse
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
    prep: Standardizer | None = None  # with standardization on
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
        gate: ModelGate | None = None,
        standardize: bool | Standardization = False,
        dp_clip: float = 0.0,
        noise: float = 0.0,
        dp_delta: float = 1e-5,
        log: logging.Logger = log,
    ) -> None:
        """``gate`` None: the strategy's own gate, else a ``ModelGate`` with its defaults.

        ``dp_clip`` and ``noise`` are the fleet's DP policy (its hyper's C and z).
        """
        self.arch = arch
        # Client-level DP: with noise z > 0 each accepted update is one Gaussian
        # mechanism on its device's data (the devices clip to C and add z·C noise).
        self.dp_clip = dp_clip
        self.noise = noise
        self.privacy = PrivacyLedger(dp_delta) if noise > 0 else None
        # The norm bound follows the policy (strategies.dpbound); a resumed strategy
        # replays under its checkpoint's policy first (see _resume).
        strategy.set_dp(dp_clip, noise)
        self.strategy = strategy
        self.topics = topics
        self.validator = Validator(topics, arch, max_bytes=max_update_bytes)
        self.counters = Counters(log)  # rejections are logged there, once a minute per reason
        self.ledger = ledger
        self.gate = gate or strategy.gate or ModelGate()
        strategy.gate = None  # until the ledger is replayed
        # ``standardize``: True builds the standardization; the daemon passes its own,
        # which its gate's evaluation reads too.
        self.std: Standardization | None = None
        if isinstance(standardize, Standardization):
            self.std = standardize
        elif standardize:
            self.std = standardization(arch, ledger)
        if ledger is not None:
            self._resume(ledger)
        self.strategy.gate = self.gate
        self.gate.start(self.strategy.weights)

    def _resume(self, ledger: Ledger) -> None:
        """Continue from the ledger: last checkpoint, then replay what came after it."""
        # The ledger refuses a checkpoint of another strategy or model (ledger_mismatch).
        saved, events = ledger.restore(self.strategy)
        if saved is None:
            ledger.checkpoint(self.strategy)  # fixes the starting weights for replays
            return
        configured = self.strategy.params()
        self.strategy = saved
        shapes = self.arch.param_shapes()
        for event in events:
            if event.kind == "flush":
                self.strategy.flush()
            elif event.kind == "discard":
                self.strategy.discard_pending()
            elif event.kind == "online":
                self.strategy.set_online(int(event.payload) if event.payload else None)
            else:
                update = Update.decode(event.payload or b"", shapes=shapes, max_bytes=2**31)
                self.strategy.apply(self._mapped(to_contribution(update)))
        self._follow_policy(ledger)
        if saved.params() != configured:
            log.warning("resuming with the ledger's settings %s", saved.params())
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

    def _follow_policy(self, ledger: Ledger) -> None:
        """After the replay, screen by this run's DP policy; a changed one is checkpointed,
        so a later replay of this run's updates screens them under it too."""
        if self.strategy.set_dp(self.dp_clip, self.noise):
            log.info(
                "DP policy clip %g noise %g: the norm bound follows it", self.dp_clip, self.noise
            )
            ledger.checkpoint(self.strategy)

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
            produced = self.strategy.apply(self._mapped(contribution))
        except UpdateRejected as exc:
            if exc.reason == "model_rejected":
                return self._discard(exc, update.device, update.seq, staleness)
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

    def handle_batch(self, messages: Sequence[tuple[str, bytes]]) -> list[Outcome]:
        """``handle`` each in order; their ledger records commit together before this returns.

        The daemon passes what the broker has already delivered, and acknowledges it only
        after this returns: one SQLite commit per batch instead of per update.
        """
        if self.ledger is None:
            return [self.handle(topic, payload) for topic, payload in messages]
        with self.ledger.transaction():
            return [self.handle(topic, payload) for topic, payload in messages]

    def refuse(self, topic: str, reason: str, message: str) -> Outcome:
        """Count a message refused before it became an update: a chunked one that never
        came together whole (``fedmq.chunks``), or a chunk that is bad by itself."""
        try:
            device = parse(topic).device
        except FedmqError:
            device = None
        return self._reject(UpdateRejected(reason, message, device=device), seq=None)

    def _reject(self, exc: UpdateRejected, seq: int | None) -> Outcome:
        self.counters.reject(exc.reason, exc.message, exc.device, seq)
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

    def _discard(
        self, exc: UpdateRejected, device: str | None, seq: int | None, staleness: int | None
    ) -> Outcome:
        """The gate refused the candidate (completed by this update, if any)."""
        self.counters.reject(exc.reason, exc.message, device, seq)
        if self.ledger is not None:
            self.ledger.record(
                self.strategy,
                "discard",
                device=device,
                seq=seq,
                reason=exc.reason,
                staleness=staleness,
            )
        return Outcome(
            False,
            False,
            self.strategy.version,
            device=device,
            reason=exc.reason,
            message=exc.message,
        )

    def _mapped(self, c: Contribution) -> Contribution:
        return c if self.std is None else self.std.contribution(c)

    def handle_stats(self, topic: str, payload: bytes) -> Outcome:
        """A device's feature statistics: merged, and the model re-parameterized if needed."""
        version = self.strategy.version
        try:
            where = parse(topic)
            if self.std is None or where.kind != "stats" or where.fleet != self.topics.fleet:
                raise TopicError("bad_topic", f"{topic!r} is not a stats topic of this fleet")
            device = where.device or ""
            stats = self.std.check(device, FeatureStats.decode(payload))
        except FedmqError as exc:
            log.warning("refused feature statistics on %s [%s]: %s", topic, exc.reason, exc.message)
            return Outcome(False, False, version, reason=exc.reason, message=exc.message)
        if not self.std.offer(stats, payload) or not self.std.published:
            return Outcome(True, False, version, device=device)
        old, new = self.std.current, self.std.target()
        unset = self.std.unset(self.strategy.version, self.strategy.pending)
        if unset:  # untrained weights: the same numbers, now with the prep they lacked
            self.strategy.remap(lambda w: dict(w))
            self.std.history = [(self.strategy.version, new)]
        else:
            self.strategy.remap(lambda w: reparameterize(w, old, new))
            self.std.history.append((self.strategy.version, new))
        log.info(
            "feature statistics of %d devices %s: version %d",
            self.std.devices,
            "set the first standardization" if unset else "changed, re-parameterized",
            self.strategy.version,
        )
        store, since = self.std.store, self.strategy.version
        if self.ledger is not None and store is not None:
            also = functools.partial(store.put_prep, since, new, only=unset)
            self.ledger.checkpoint(self.strategy, also=also)
        return Outcome(True, True, self.strategy.version, device=device)

    def set_online(self, online: int | None) -> None:
        """Devices online from their retained statuses (FedBuff's K_eff); a ledger event."""
        self.strategy.set_online(online)
        if self.ledger is not None:
            payload = b"" if online is None else str(online).encode()
            self.ledger.record(self.strategy, "online", payload=payload or None)

    def flush(self) -> Outcome:
        """The deadline flush (see ``aggregator.deadline``): close what is pending."""
        try:
            produced = self.strategy.flush()
        except UpdateRejected as exc:
            if exc.reason != "model_rejected":
                raise
            return self._discard(exc, None, None, None)
        if produced and self.ledger is not None:
            self.ledger.record(self.strategy, "flush")
        return Outcome(False, produced, self.strategy.version)

    def snapshot(self, *, ledgers: bool = False, publish: bool = False) -> Snapshot:
        """The state to publish; ``ledgers`` also takes the device ledgers changed since.

        ``publish``: the model is about to go out, which fixes its standardization.
        """
        prep = None
        if self.std is not None:
            prep = self.std.publish(self.strategy.version) if publish else self.std.current
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
            params={**self.strategy.params(), **self.gate.params()},
            accepted=c.accepted,
            rejected=dict(c.rejected),
            bytes_in=c.bytes_in,
            ledgers=changed,
            prep=prep,
            epsilon=None if p is None else p.fleet_epsilon(),
        )

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()


def standardization(arch: Arch, ledger: Ledger | None) -> Standardization:
    """Federated standardization for ``arch``, kept in ``ledger`` when there is one."""
    store = None if ledger is None else StatsStore(ledger.db)
    names = None if arch.schema is None else arch.schema.features
    return Standardization(arch.n_inputs, store, names)
