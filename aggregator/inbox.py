"""The aggregator's inbox: what the broker delivers, handled in arrival order.

Updates go to the ``Intake`` on its worker thread in batches of what the broker has
already delivered (one ledger commit each: ``Intake.handle_batch``), and every message
of a batch is acknowledged only after that commit, so a crash in between makes the
broker deliver it again. Device statuses feed ``DeviceStates`` (and FedBuff's K_eff,
a ledger event of its own); feature statistics go to the intake's standardization.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt

from aggregator.devices import DeviceStates, topic_kind
from aggregator.intake import Intake, Outcome
from aggregator.metrics import Metrics

MAX_BATCH = 256  # updates per ledger commit at most (a bound on the work between acks)


class Inbox:
    def __init__(
        self,
        intake: Intake,
        on_worker: Callable[..., Awaitable[Any]],
        on_outcome: Callable[[Outcome], None],
        metrics: Metrics | None,
    ) -> None:
        self.intake = intake
        self.on_worker = on_worker  # runs a call on the intake's thread
        self.on_outcome = on_outcome
        self.metrics = metrics
        self.devices = DeviceStates()  # from their retained statuses
        self.stats_heard = asyncio.Event()  # set on each feature statistics message

    async def receive(
        self, client: aiomqtt.Client, persistent: bool, stash: list[aiomqtt.Message]
    ) -> None:
        if stash:  # what arrived during the start check, not acknowledged yet
            await self._batch(client, persistent, stash)
        messages = client.messages
        async for first in messages:
            # Everything already delivered goes to the intake as one batch (one ledger
            # commit); while it is handled, the next batch queues up here.
            batch = [first]
            for _ in range(min(len(messages), MAX_BATCH - 1)):
                batch.append(await anext(messages))
            await self._batch(client, persistent, batch)

    async def _batch(self, client: aiomqtt.Client, persistent: bool, batch: list[Any]) -> None:
        """Handle what was delivered, in order; acknowledge it all after its commits."""
        updates: list[tuple[str, bytes]] = []
        for message in batch:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            topic = str(message.topic)
            kind = topic_kind(topic)
            if kind == "device_status":
                online = self.devices.note(topic, payload)
                if self.metrics is not None:
                    self.metrics.device_states(self.devices.counts())
                if online is None:
                    continue
                step: tuple[Any, ...] = (self.intake.set_online, online)
            elif kind == "stats":
                step = (self.intake.handle_stats, topic, payload)
            else:
                updates.append((topic, payload))
                continue
            # A ledger event of its own: the updates before it go first, as they came.
            await self._updates(updates)
            updates = []
            outcome = await self.on_worker(*step)
            if kind == "stats":
                self.stats_heard.set()
                self.on_outcome(outcome)
        await self._updates(updates)
        # Only now is every record of the batch committed.
        if persistent:
            for message in batch:
                if message.qos > 0:
                    client._client.ack(message.mid, message.qos)

    async def _updates(self, updates: list[tuple[str, bytes]]) -> None:
        if not updates:
            return
        outcomes, seconds = await self.on_worker(self._timed, updates)
        for outcome, (_, payload) in zip(outcomes, updates, strict=True):
            self.on_outcome(outcome)
            self._observe(outcome, seconds / len(updates), len(payload))

    def _timed(self, updates: list[tuple[str, bytes]]) -> tuple[list[Outcome], float]:
        start = time.perf_counter()
        outcomes = self.intake.handle_batch(updates)
        return outcomes, time.perf_counter() - start

    def _observe(self, outcome: Outcome, seconds: float, nbytes: int) -> None:
        if self.metrics is None:
            return
        if outcome.reason is not None:
            self.metrics.rejected(outcome.reason, seconds, nbytes)
        elif outcome.applied:
            self.metrics.accepted(outcome.staleness or 0, seconds, nbytes)
