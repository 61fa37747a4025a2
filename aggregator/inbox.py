"""The aggregator's inbox: what the broker delivers, handled in arrival order.

Updates go to the ``Intake`` on its worker thread in batches of what the broker has
already delivered (one ledger commit each: ``Intake.handle_batch``), and every message
of a batch is acknowledged only after that commit, so a crash in between makes the
broker deliver it again. Device statuses feed ``DeviceStates`` (and FedBuff's K_eff,
a ledger event of its own); feature statistics go to the intake's standardization.

An update in chunks (``fedmq.chunks``) is put back together here, and each chunk is
acknowledged only once its whole message is resolved: applied and committed, or
refused and counted. A kill -9 in between therefore makes the broker deliver every
unacknowledged chunk again, and the intake's dedupe (device + seq) applies the update
at most once; chunks lost on the device's side only leave a partial message that times
out (``chunk_missing``), after which the device's next update gets a new seq. A broker
whose in-flight window is below the chunks held stalls instead: ``aggregator.stall``
notices it, warns and counts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt

from aggregator.devices import DeviceStates, topic_kind
from aggregator.intake import Intake, Outcome
from aggregator.metrics import Metrics
from aggregator.stall import WindowStalls
from fedmq.aio import wait_event
from fedmq.chunks import Chunk, Reassembler, Resolved, is_chunk
from fedmq.errors import WireError

MAX_BATCH = 256  # updates per ledger commit at most (a bound on the work between acks)
# Chunks held unacknowledged at most: below the broker's in-flight window for the
# aggregator (max_inflight_messages 100 in broker_config/), which would otherwise fill
# with partial messages and stop delivering the chunks that complete them.
MAX_HELD_CHUNKS = 64
log = logging.getLogger("fedmq.aggregator")


def reassembler(max_message: int, max_bytes: int, timeout: float) -> Reassembler:
    """The chunk reassembler of an inbox: per device at most two partial updates."""
    return Reassembler(
        max_message=max_message, max_bytes=max_bytes, max_chunks=MAX_HELD_CHUNKS, timeout=timeout
    )


class Inbox:
    def __init__(
        self,
        intake: Intake,
        on_worker: Callable[..., Awaitable[Any]],
        on_outcome: Callable[[Outcome], None],
        metrics: Metrics | None,
        chunks: Reassembler | None = None,
    ) -> None:
        self.intake = intake
        self.on_worker = on_worker  # runs a call on the intake's thread
        self.on_outcome = on_outcome
        self.metrics = metrics
        self.devices = DeviceStates()  # from their retained statuses
        self.stats_heard = asyncio.Event()  # set on each feature statistics message
        self.chunks = chunks if chunks is not None else Reassembler(max_chunks=MAX_HELD_CHUNKS)
        self.stalls = WindowStalls(self.chunks.timeout, self.chunks.max_chunks, log)

    async def receive(
        self, client: aiomqtt.Client, persistent: bool, stash: list[aiomqtt.Message]
    ) -> None:
        # A new session: the broker resends what was not acknowledged, so the handles of
        # the old one are void, and so are partial messages built from them.
        self.chunks.clear()
        self.stalls.heard(0, 0)
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
        acks: list[Any] = []
        # The broker delivered (QoS 0 passes a full window, so it does not count): noted
        # now too, since the sweep may run while a long batch is on the intake's thread.
        delivered = any(message.qos for message in batch)  # mostly the first: updates are QoS 1
        if delivered:
            self.stalls.heard(len(self.chunks), self.chunks.nchunks)
        for message in batch:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            topic = str(message.topic)
            kind = topic_kind(topic)
            if kind not in ("device_status", "stats") and is_chunk(payload):
                resolved = self._chunk(topic, payload, message)
                updates += [(topic, r.payload) for r in resolved if r.payload is not None]
                if any(r.reason is not None for r in resolved):  # a refusal of its own
                    await self._updates(updates)
                    updates = []
                acks += await self._resolved(resolved)
                continue
            acks.append(message)
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
        self._ack(client, persistent, acks)
        if delivered:
            self.stalls.heard(len(self.chunks), self.chunks.nchunks)

    def _ack(self, client: aiomqtt.Client, persistent: bool, messages: list[Any]) -> None:
        if persistent:
            for message in messages:
                if message is not None and message.qos > 0:
                    client._client.ack(message.mid, message.qos)

    def _chunk(self, topic: str, payload: bytes, message: Any) -> list[Resolved]:
        """One chunk of an update: what it resolved (a whole payload, refusals, repeats)."""
        try:
            chunk = Chunk.decode(payload, max_bytes=self.intake.validator.max_bytes)
            if chunk.of != "update":
                raise WireError("bad_kind", f"a chunk of {chunk.of} on an update topic")
        except WireError as exc:  # no message to tie it to: refused by itself
            return [Resolved(topic, "", [message], reason=exc.reason, message=exc.message)]
        return self.chunks.offer(topic, chunk, message)

    async def _resolved(self, resolved: list[Resolved]) -> list[Any]:
        """Count the refusals among ``resolved``; the handles to acknowledge after commit."""
        acks = []
        for r in resolved:
            if r.reason is not None:
                outcome = await self.on_worker(self.intake.refuse, r.sender, r.reason, r.message)
                self.on_outcome(outcome)
                self._observe(outcome, 0.0, 0)
            acks += r.tokens
        return acks

    async def sweep(self, client: aiomqtt.Client, stop: asyncio.Event, persistent: bool) -> None:
        """Refuse the partial chunked updates that time out (``chunk_missing``), until stop."""
        while not await wait_event(stop, self.chunks.timeout / 4):
            resolved = self.chunks.expire()
            if not resolved:
                continue
            # Only held acknowledgements fill the broker's window: without a persistent
            # session paho acknowledges on arrival.
            if persistent and self.stalls.timed_out() and self.metrics is not None:
                self.metrics.window_stalled()
            self._ack(client, persistent, await self._resolved(resolved))

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
