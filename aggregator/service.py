"""The aggregator daemon: updates in, validated, folded by the strategy, model out.

Three concurrent jobs share one MQTT connection: the receiver (validate and apply
each update as it arrives), the publisher (at most one retained model publish per
``publish_interval``, so a burst of versions does not flood the broker; each published
version is evaluated, exported to ONNX and logged to the history file) and the status
job (retained AggregatorStatus and per-device ledgers). Synchronous FedAvg adds a
fourth: the round deadline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from dataclasses import dataclass

import aiomqtt

from aggregator.config import AggregatorConfig
from aggregator.counters import Counters
from aggregator.ledger import Ledger
from aggregator.strategies import Strategy
from aggregator.validation import Validator, to_contribution
from fedmq.aio import TaskGroup, only, wait_any, wait_event
from fedmq.data import Dataset
from fedmq.errors import ConfigError, UpdateRejected
from fedmq.identity import client_id
from fedmq.model import Arch, accuracy, loss
from fedmq.topics import Topics
from fedmq.training import Hyper
from fedmq.wire import AggregatorStatus, GlobalModel, Update, new_run

log = logging.getLogger("fedmq.aggregator")


@dataclass(frozen=True)
class Evaluation:
    version: int
    accuracy: float | None
    loss: float
    at: float


class Aggregator:
    def __init__(
        self,
        cfg: AggregatorConfig,
        strategy: Strategy,
        arch: Arch,
        hyper: Hyper,
        evalset: Dataset | None = None,
    ) -> None:
        self.cfg = cfg
        self.strategy = strategy
        self.arch = arch
        self.hyper = hyper
        self.evalset = evalset
        self.topics = Topics(cfg.fleet)
        self.validator = Validator(self.topics, arch, max_bytes=cfg.max_update_bytes)
        self.counters = Counters(log)
        self.started_at = time.time()
        self.run_id = new_run()  # the ledger should keep it (issue 10, "A run identity")
        self.last_eval: Evaluation | None = None
        self.published_version = -1
        self.onnx_path = cfg.out_dir / "model.onnx"
        self.history_path = cfg.out_dir / "history.jsonl"
        self.serving = asyncio.Event()
        self.version_published = asyncio.Condition()
        self._dirty = asyncio.Event()
        self._last_version_at = time.monotonic()
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        self.ledger: Ledger | None = None
        if cfg.ledger:
            self.ledger = Ledger(
                cfg.out_dir / "ledger.sqlite",
                checkpoint_every=cfg.checkpoint_every,
                durable=cfg.durable,
            )
            self._resume()

    def _resume(self) -> None:
        """Continue from the ledger: last checkpoint, then replay what came after it."""
        assert self.ledger is not None
        saved, events = self.ledger.restore()
        if saved is None:
            self.ledger.checkpoint(self.strategy)  # fixes the starting weights for replays
            return
        if saved.name != self.strategy.name:
            raise ConfigError(
                "ledger_mismatch",
                f"{self.ledger.path} holds a {saved.name} federation, not {self.strategy.name};"
                " use another --out-dir or move the ledger away",
            )
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
        self.validator.last_seq = self.ledger.last_seqs()
        self.counters.accepted, self.counters.rejected = self.ledger.counts()
        log.info(
            "resumed %s at version %d (%d events replayed)",
            self.strategy.name,
            self.strategy.version,
            len(events),
        )

    # -- the connection ---------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, reconnecting with jittered backoff."""
        try:
            await self._serve(stop)
        finally:
            if self.ledger is not None:
                self.ledger.close()

    async def _serve(self, stop: asyncio.Event) -> None:
        rng, attempt = random.Random(), 0
        while not stop.is_set():
            try:
                await self._session(stop)
                attempt = 0
            except Exception as exc:
                if not only(exc, aiomqtt.MqttError):
                    raise
                self.serving.clear()
                delay = rng.uniform(0, min(30.0, 0.5 * 2**attempt))
                attempt += 1
                log.warning(
                    "broker %s lost (%s); reconnecting in %.1fs", self.cfg.broker.url, exc, delay
                )
                await wait_event(stop, delay)

    async def _session(self, stop: asyncio.Event) -> None:
        will = aiomqtt.Will(
            self.topics.aggregator_status, self._status("offline").encode(), qos=1, retain=True
        )
        persistent = self.ledger is not None
        client = aiomqtt.Client(
            **self.cfg.broker.client_kwargs(),
            identifier=self.cfg.client_id
            or client_id(self.cfg.broker.username, f"fedmq-aggregator-{self.cfg.fleet}"),
            will=will,
            keepalive=self.cfg.keepalive,
            clean_session=not persistent,
        )
        if persistent:
            # Acknowledge an update only once its effect is committed to the ledger, so a
            # crash in between makes the broker deliver it again (aiomqtt issue #345).
            client._client.manual_ack_set(True)
        async with client:
            # Subscribe first: devices answer the model at once, and an update published
            # before this subscription exists would be lost.
            await client.subscribe(self.topics.updates_filter, qos=1)
            # The ONNX export (and its import of onnx) waits until after "serving":
            # devices need only the model to get going, and a restart recovers faster.
            model = await self._publish_model(client, export=False)
            await self._publish_status(client, "serving")
            self.serving.set()
            log.info("serving fleet %s on %s", self.cfg.fleet, self.cfg.broker.url)
            async with TaskGroup() as tg:
                jobs = [
                    tg.create_task(self._receive(client)),
                    tg.create_task(self._publisher(client, stop)),
                    tg.create_task(self._status_loop(client, stop)),
                    tg.create_task(self._deadlines(stop)),
                    tg.create_task(self._publish_onnx(client, model)),
                ]
                await stop.wait()
                # Each job also ends by itself on ``stop``: aiomqtt's publish awaits
                # asyncio.wait_for, which before Python 3.12 can swallow a cancellation
                # that arrives with the PUBACK, and the group would then wait forever.
                for job in jobs:
                    job.cancel()
            if self._dirty.is_set():
                await self._publish_model(client)
            await self._publish_status(client, "offline")
            self.serving.clear()

    # -- updates in -------------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            self.handle(str(message.topic), payload)
            if self.ledger is not None and message.qos > 0:
                client._client.ack(message.mid, message.qos)

    def handle(self, topic: str, payload: bytes) -> bool:
        """Validate and apply one update; True when it produced a new version."""
        self.counters.bytes_in += len(payload)
        try:
            update, contribution = self.validator.check(topic, payload)
        except UpdateRejected as exc:
            self._reject(exc, seq=None)
            return False
        self.validator.seen(update.device, update.seq)
        staleness = self.strategy.version - update.base_version
        try:
            produced = self.strategy.apply(contribution)
        except UpdateRejected as exc:
            self._reject(exc, seq=update.seq)
            return False
        # Committed before this returns, so before the broker gets its acknowledgement.
        if self.ledger is not None:
            self.ledger.record(
                self.strategy,
                "applied",
                device=update.device,
                seq=update.seq,
                staleness=staleness,
                samples=update.num_samples,
                payload=payload,
            )
        self.counters.accept(update.device, update.seq, staleness, update.num_samples)
        if produced:
            self._versioned()
        return produced

    def _reject(self, exc: UpdateRejected, seq: int | None) -> None:
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

    def _versioned(self) -> None:
        self._last_version_at = time.monotonic()
        self._dirty.set()

    async def _deadlines(self, stop: asyncio.Event) -> None:
        """Close a FedAvg round, or a FedBuff buffer that is not filling, at the deadline.

        Devices train once per version, so a buffer of K cannot fill while fewer than K
        devices are online; without this the fleet would wait forever.
        """
        while not stop.is_set():
            idle = time.monotonic() - self._last_version_at
            if idle < self.cfg.round_deadline:
                await wait_event(stop, self.cfg.round_deadline - idle)
            elif self.strategy.flush():
                if self.ledger is not None:
                    self.ledger.record(self.strategy, "flush")
                self._versioned()
            else:
                self._last_version_at = time.monotonic()

    # -- model out --------------------------------------------------------------------

    async def _publisher(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        while await wait_any(self._dirty, stop) and not stop.is_set():
            await self._publish_model(client)
            await wait_event(stop, self.cfg.publish_interval)  # the rate limit

    async def _publish_model(self, client: aiomqtt.Client, *, export: bool = True) -> GlobalModel:
        self._dirty.clear()
        version, weights = self.strategy.version, self.strategy.weights
        model = GlobalModel.build(
            version, self.arch, weights, self.hyper, run=self.run_id, created_at=time.time()
        )
        payload = model.encode()
        await client.publish(self.topics.model_global, payload, qos=1, retain=True)
        if export:
            await self._publish_onnx(client, model)
        if version != self.published_version:
            self.last_eval = await asyncio.to_thread(self._evaluate, version, weights)
            self._append_history(self.last_eval)
        self.published_version = version
        async with self.version_published:
            self.version_published.notify_all()
        return model

    async def _publish_onnx(self, client: aiomqtt.Client, model: GlobalModel) -> None:
        if self.cfg.export_onnx:
            onnx_bytes = await asyncio.to_thread(self._export, model)
            await client.publish(self.topics.model_onnx, onnx_bytes, qos=1, retain=True)

    def _export(self, model: GlobalModel) -> bytes:
        from fedmq.onnx_export import to_onnx, write_onnx

        data = to_onnx(self.arch, model.weights, model_version=model.version, digest=model.digest)
        write_onnx(self.onnx_path, data)
        return data

    def _evaluate(self, version: int, weights: dict) -> Evaluation | None:
        if self.evalset is None:
            return None
        x, y = self.evalset.x, self.evalset.y
        acc = accuracy(self.arch, weights, x, y) if self.arch.is_classifier else None
        return Evaluation(version, acc, loss(self.arch, weights, x, y), time.time())

    def _append_history(self, ev: Evaluation | None) -> None:
        line = {
            "version": self.strategy.version if ev is None else ev.version,
            "time": time.time(),
            "accuracy": None if ev is None else ev.accuracy,
            "loss": None if ev is None else ev.loss,
            "updates_applied": self.counters.accepted,
            "bytes_in": self.counters.bytes_in,
        }
        with self.history_path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    async def wait_for_version(self, version: int) -> None:
        """Until a model at least this new has been published (tests and the demo)."""
        async with self.version_published:
            await self.version_published.wait_for(lambda: self.published_version >= version)

    # -- status -----------------------------------------------------------------------

    def _status(self, state: str) -> AggregatorStatus:
        ev = self.last_eval
        return AggregatorStatus(
            state=state,
            strategy=self.strategy.name,
            params=self.strategy.params(),
            version=self.strategy.version,
            accepted=self.counters.accepted,
            rejected=dict(self.counters.rejected),
            last_accuracy=None if ev is None else ev.accuracy,
            last_loss=None if ev is None else ev.loss,
            started_at=self.started_at,
            at=time.time(),
        )

    async def _publish_status(self, client: aiomqtt.Client, state: str) -> None:
        payload = self._status(state).encode()
        await client.publish(self.topics.aggregator_status, payload, qos=1, retain=True)
        for device in sorted(self.counters.dirty):
            ledger = self.counters.ledger(device).encode()
            await client.publish(self.topics.aggregator_device(device), ledger, qos=1, retain=True)
        self.counters.dirty.clear()

    async def _status_loop(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        while not await wait_event(stop, self.cfg.status_interval):  # a heartbeat
            await self._publish_status(client, "serving")
