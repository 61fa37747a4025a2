"""Federated standardization on the aggregator: the devices' statistics, merged exactly.

Each device's latest ``feature_stats`` (by ``at``) is kept, once per device; their
pooled moments give the fleet's standardization (``fedmq.preprocess``). Until the first
model goes out, a change simply replaces it. After that, a change re-parameterizes the
model (``Strategy.remap`` with ``fedmq.preprocess.reparameterize``): the function of
raw inputs stays the same, as a new version devices train on next. The exception is a
first model that went out with no statistics at all and has not been trained since:
the first statistics then set its standardization (``unset``), and updates trained
before that are refused as too stale.

Every standardization the fleet has held is kept with the version it took effect at,
so an update trained from an older version is mapped into the current one before the
strategy sees it (the map is linear, so a delta maps like the weights). Synchronous,
on the intake's thread, like the rest of the intake.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from aggregator.stats_store import StatsStore
from aggregator.strategies import Contribution
from fedmq.aio import wait_any
from fedmq.errors import DataError, FedmqError, UpdateRejected, WireError
from fedmq.featurestats import FeatureStats
from fedmq.model import global_norm
from fedmq.preprocess import Moments, Standardizer, pool, reparameterize

log = logging.getLogger("fedmq.aggregator")


class Standardization:
    """``features``: the schema's feature names, by which named statistics are ordered."""

    def __init__(
        self,
        width: int,
        store: StatsStore | None = None,
        features: tuple[str, ...] | None = None,
    ) -> None:
        self.width = width
        self.store = store
        self.features = features
        self.latest: dict[str, FeatureStats] = {}
        self.history: list[tuple[int, Standardizer]] = [(0, Standardizer.identity(width))]
        self.published = False  # once a model carried the prep, changes re-parameterize
        if store is not None:
            self._load(store)

    def _load(self, store: StatsStore) -> None:
        for device, payload in store.stats().items():
            try:
                self.latest[device] = self.check(device, FeatureStats.decode(payload))
            except FedmqError as exc:  # a row another fedmq wrote: counted as missing
                log.warning("ignoring stored feature statistics of %s: %s", device, exc)
        if preps := store.preps():
            self.history, self.published = preps, True

    @property
    def current(self) -> Standardizer:
        return self.history[-1][1]

    @property
    def devices(self) -> int:
        return len(self.latest)

    def merged(self) -> Moments | None:
        if not self.latest:
            return None
        return pool(s.moments() for s in self.latest.values())

    def target(self) -> Standardizer:
        merged = self.merged()
        return (
            Standardizer.identity(self.width)
            if merged is None
            else Standardizer.from_moments(merged)
        )

    def check(self, device: str, stats: FeatureStats) -> FeatureStats:
        if stats.device != device:
            raise WireError("bad_device_id", f"stats of {stats.device} on {device}'s topic")
        if self.features is not None:  # a device's columns may be in any order
            stats = stats.in_order(self.features)
        if stats.width != self.width:
            raise DataError(
                "bad_shape", f"{device} reports {stats.width} features, the model has {self.width}"
            )
        return stats

    def offer(self, stats: FeatureStats, payload: bytes) -> bool:
        """Keep ``stats`` if it is the device's latest; True when the target changed."""
        held = self.latest.get(stats.device)
        if held is not None and stats.at <= held.at:
            return False
        before = self.target()
        self.latest[stats.device] = stats
        if self.store is not None:
            self.store.put_stats(stats.device, payload)
        return not self.target().same_as(before)

    def at(self, version: int) -> Standardizer:
        """The standardization a model of ``version`` carried."""
        held = self.history[0][1]
        for since, prep in self.history:
            if since > version:
                break
            held = prep
        return held

    def contribution(self, c: Contribution) -> Contribution:
        """``c``'s delta in the current parameterization (unchanged if it is already);
        UpdateRejected for one trained before the standardization was set (``unset``)."""
        since = self.history[0][0]
        if self.published and c.base_version < since:
            raise UpdateRejected(
                "too_stale",
                f"trained on version {c.base_version}, before the fleet's standardization "
                f"was set at version {since}",
                device=c.device,
                staleness=since - c.base_version,
            )
        old, new = self.at(c.base_version), self.current
        if old is new:
            return c
        # The re-parameterization changes the delta's norm (a shifted mean moves the
        # bias by the first layer's delta), but a DP bound is about what was sent.
        sent = global_norm(c.delta) if c.sent_norm is None else c.sent_norm
        try:
            delta = reparameterize(c.delta, old, new)
        except DataError as exc:  # overflowed: a delta no bound would let through
            raise UpdateRejected("norm_bound", exc.message, device=c.device) from None
        return replace(c, delta=delta, sent_norm=sent)

    def unset(self, version: int, pending: int) -> bool:
        """Whether statistics arriving now set the standardization instead of changing it.

        True when the first model went out without any (``stats_wait`` ran out before a
        device sent some) and nothing has been trained since: no version past it, nothing
        pending. Its weights are then the untrained initialization, which takes the
        standardization it should have had. Re-expressing them for raw inputs instead
        would keep a random function at the price of a feature in the 1e4s scaling its
        weights by as much, which training does not recover from.
        """
        since, prep = self.history[0]
        return (
            len(self.history) == 1
            and version == since
            and pending == 0
            and prep.same_as(Standardizer.identity(self.width))
        )

    def publish(self, version: int) -> Standardizer:
        """The prep of the model about to go out; from now on changes re-parameterize."""
        if not self.published:
            self.history = [(version, self.target())]
            self.published = True
            if self.store is not None:
                self.store.put_prep(version, self.current)
        return self.current

    async def quorum(
        self, heard: asyncio.Event, stop: asyncio.Event, quorum: int, wait: float
    ) -> None:
        """Before the first model: statistics from ``quorum`` devices, or ``wait`` seconds.

        ``heard`` is set on every statistics message the daemon hands to the intake.
        """
        if self.published:  # fixed by an earlier run (the ledger)
            return
        until = time.monotonic() + wait
        while True:
            heard.clear()  # before the count: a message in between still wakes us
            if stop.is_set() or self.devices >= quorum:
                return
            left = until - time.monotonic()
            if left <= 0:
                log.warning(
                    "feature statistics from %d of %d devices after %.0fs; publishing anyway",
                    self.devices,
                    quorum,
                    wait,
                )
                return
            await wait_any(heard, stop, timeout=left)
