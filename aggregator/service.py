"""The aggregator daemon's MQTT side: the session, reconnects and acknowledgements.

What the broker delivers goes to the inbox (``aggregator.inbox``): updates to the
``Intake`` on one worker thread, strictly in arrival order, acknowledged only after
their batch's ledger commit. Besides the inbox, a session runs the start check
(``aggregator.startup``), the publisher (at most one retained model publish per
``publish_interval``: ``aggregator.publisher``), the status heartbeat (retained
AggregatorStatus and per-device ledgers), the progress line and the round deadline
(``aggregator.deadline``). The event loop itself only moves bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt

from aggregator.config import AggregatorConfig
from aggregator.counters import Counters
from aggregator.deadline import Deadline
from aggregator.inbox import Inbox, reassembler
from aggregator.intake import Intake, Outcome, Snapshot, standardization
from aggregator.ledger import Ledger
from aggregator.metrics import Metrics
from aggregator.progress import Progress
from aggregator.publisher import Evaluation, Publisher, make_out_dir
from aggregator.startup import read_retained_model, start_check
from aggregator.storage import storage_failure, why_offline
from aggregator.strategies import ModelGate, Strategy
from aggregator.strategies.gate import eval_loss
from fedmq.aio import TaskGroup, only, wait_any, wait_event
from fedmq.backoff import Backoff
from fedmq.data import Dataset
from fedmq.errors import FedmqError
from fedmq.identity import client_id
from fedmq.model import Arch
from fedmq.topics import Topics
from fedmq.training import Hyper
from fedmq.wire import DEVICE_STATES, AggregatorStatus, GlobalModel, new_run

log = logging.getLogger("fedmq.aggregator")
FAREWELL_TIMEOUT = 5.0  # seconds to publish the offline status on a failure
T = TypeVar("T")

__all__ = ["Aggregator", "Evaluation"]


class Aggregator:
    def __init__(
        self,
        cfg: AggregatorConfig,
        strategy: Strategy,
        arch: Arch,
        hyper: Hyper,
        evalset: Dataset | None = None,
    ) -> None:
        self.cfg, self.hyper = cfg, hyper
        self.topics = Topics(cfg.fleet)
        self.started_at = time.time()
        make_out_dir(cfg.out_dir)
        # The one thread the intake (and its SQLite connection) lives on.
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="fedmq-intake")
        self.intake = self._worker.submit(self._open_intake, strategy, arch, evalset).result()
        self.publisher = Publisher(
            self.topics,
            arch,
            hyper,
            cfg.out_dir,
            run=new_run(),  # without a ledger; with one, the start check sets the ledger's
            evalset=evalset,
            export_onnx=cfg.export_onnx,
            max_payload=cfg.max_payload,
        )
        self.serving = asyncio.Event()
        self.subscribed = asyncio.Event()  # before serving: it may wait for statistics
        self.version_published = asyncio.Condition()
        self._dirty = asyncio.Event()
        self._deadline = Deadline(cfg.round_deadline, time.monotonic())
        self.metrics = None if cfg.metrics_port is None else Metrics()
        chunks = reassembler(cfg.max_update_bytes, cfg.chunk_buffer, cfg.chunk_timeout)
        self.inbox = Inbox(self.intake, self._on_worker, self._outcome, self.metrics, chunks)
        self._bytes_reported = 0
        self._checked = False  # the start check (aggregator.startup) runs once, at start

    def _open_intake(self, strategy: Strategy, arch: Arch, evalset: Dataset | None) -> Intake:
        ledger = None
        if self.cfg.ledger:
            ledger = Ledger(
                self.cfg.out_dir / "ledger.sqlite",
                checkpoint_every=self.cfg.checkpoint_every,
                durable=self.cfg.durable,
            )
        std = standardization(arch, ledger) if self.cfg.standardize else None
        gate = ModelGate(
            max_weight=self.cfg.gate_max_weight,
            evaluate=None if evalset is None else eval_loss(arch, evalset, prep=std),
            loss_factor=self.cfg.gate_loss_factor,
            loss_margin=self.cfg.gate_loss_margin,
        )
        return Intake(
            self.topics,
            arch,
            strategy,
            max_update_bytes=self.cfg.max_update_bytes,
            ledger=ledger,
            gate=gate,
            standardize=std or False,
            dp_clip=self.hyper.dp_clip,
            noise=self.hyper.dp_noise,
            dp_delta=self.cfg.dp_delta,
        )

    # Read-only views for the demo and tests; the intake's state changes on its thread.
    @property
    def strategy(self) -> Strategy:
        return self.intake.strategy

    @property
    def counters(self) -> Counters:
        return self.intake.counters

    @property
    def last_eval(self) -> Evaluation | None:
        return self.publisher.last_eval

    @property
    def published_version(self) -> int:
        return self.publisher.published_version

    @property
    def onnx_path(self) -> Path:
        return self.publisher.onnx_path

    async def _on_worker(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    def handle(self, topic: str, payload: bytes) -> bool:
        """One update, synchronously (tests, fuzzing; not from the event loop).

        True when it produced a new version.
        """
        outcome = self._worker.submit(self.intake.handle, topic, payload).result()
        self._outcome(outcome)
        return outcome.new_version

    # -- the connection ---------------------------------------------------------------

    def close(self) -> None:
        """Release what an aggregator that never ran holds (its intake thread, the ledger)."""
        self.publisher.close()
        self._worker.submit(self.intake.close).result()
        self._worker.shutdown()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, reconnecting with jittered backoff."""
        if self.metrics is not None:
            self.metrics.serve(self.cfg.metrics_port or 0)
            log.info("metrics on http://127.0.0.1:%d/metrics", self.metrics.port)
        try:
            await self._serve(stop)
        finally:
            if self.metrics is not None:
                self.metrics.close()
            self.publisher.close()
            await self._on_worker(lambda: self.counters.rejections.flush(final=True))
            await self._on_worker(self.intake.close)

    async def _serve(self, stop: asyncio.Event) -> None:
        backoff = Backoff(0.5, 30.0)
        while not stop.is_set():
            try:
                await self._session(stop)
                backoff.reset()
            except Exception as exc:
                if not only(exc, aiomqtt.MqttError):
                    raise
                self.serving.clear()
                delay = backoff.next()
                log.warning(
                    "broker %s lost (%s); reconnecting in %.1fs", self.cfg.broker.url, exc, delay
                )
                await wait_event(stop, delay)

    async def _session(self, stop: asyncio.Event) -> None:
        offline = self._status("offline", await self._on_worker(self.intake.snapshot))
        will = aiomqtt.Will(self.topics.aggregator_status, offline.encode(), qos=1, retain=True)
        persistent = self.intake.ledger is not None
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
            try:
                await self._serve_session(client, stop, persistent)
            except BaseException as exc:
                failure = storage_failure(exc, f"aggregator {self.cfg.out_dir}")
                await self._farewell(client, exc, failure)
                if failure is not None and failure is not exc:
                    raise failure from exc
                raise

    async def _serve_session(
        self, client: aiomqtt.Client, stop: asyncio.Event, persistent: bool
    ) -> None:
        stash = [] if self._checked else await self._start_check(client)
        # Subscribe first: devices answer the model at once, and an update published
        # before this subscription exists would be lost.
        await client.subscribe(self.topics.updates_filter, qos=1)
        # Devices online (the progress line, fedmq_devices{state}); QoS 0: no acks.
        await client.subscribe(self.topics.device_status_filter, qos=0)
        if self.intake.std is not None:
            await client.subscribe(self.topics.stats_filter, qos=1)
        self.subscribed.set()
        async with TaskGroup() as tg:
            receiver = tg.create_task(self.inbox.receive(client, persistent, stash))
            if self.intake.std is not None:
                await self.intake.std.quorum(
                    self.inbox.stats_heard, stop, self.cfg.stats_quorum, self.cfg.stats_wait
                )
            # The ONNX export waits until after "serving": devices need only the model
            # to get going, and a restart recovers faster.
            model = await self._publish_model(client, export=False)
            await self._publish_status(client, "serving")
            self.serving.set()
            log.info("serving fleet %s on %s", self.cfg.fleet, self.cfg.broker.url)
            jobs = [
                receiver,
                tg.create_task(self._publisher(client, stop)),
                tg.create_task(self._status_loop(client, stop)),
                tg.create_task(self._deadlines(stop)),
                tg.create_task(self._progress_loop(stop)),
                tg.create_task(self.inbox.sweep(client, stop, persistent)),
                tg.create_task(self.publisher.publish_onnx(client, model)),
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
        self.subscribed.clear()

    async def _start_check(self, client: aiomqtt.Client) -> list[aiomqtt.Message]:
        """The start check (``aggregator.startup``), once; what arrived meanwhile comes
        back, unacknowledged, for the inbox."""
        ledger, topic = self.intake.ledger, self.topics.model_global
        if ledger is None:  # every start is a new run, which devices follow
            if self.cfg.max_payload is None:
                self._checked = True
                return []
            seen, stash = await read_retained_model(client, topic)  # its retained chunks
        else:
            version = self.intake.strategy.version
            record, stash, seen = await start_check(
                client, topic, ledger, version, self.cfg, self._on_worker
            )
            self.publisher.run, self.publisher.rollbacks = record.run, record.rollbacks
        self.publisher.retained_chunks = 0 if seen is None else seen.chunks
        self._checked = True  # only now: a broker lost during the check means checking again
        return stash

    async def _farewell(
        self, client: aiomqtt.Client, exc: BaseException, failure: FedmqError | None
    ) -> None:
        """Publish ``offline`` before the clean DISCONNECT, which suppresses the last will."""
        if only(exc, aiomqtt.MqttError):
            return  # the connection is gone: the broker sends the last will
        reason, message = why_offline(exc, failure)
        try:
            snap = await self._on_worker(self.intake.snapshot)
            status = self._status("offline", snap, reason=reason, message=message)
            publish = client.publish(
                self.topics.aggregator_status, status.encode(), qos=1, retain=True
            )
            await asyncio.wait_for(publish, FAREWELL_TIMEOUT)
        except Exception as err:  # the original failure is what the operator must see
            log.warning("could not publish the offline status: %s", err)

    # -- updates in -------------------------------------------------------------------

    def _outcome(self, outcome: Outcome) -> None:
        if outcome.new_version:
            self._deadline.versioned(time.monotonic())
            self._dirty.set()
        elif outcome.reason == "model_rejected":
            # The refused candidate took the pending updates with it, and their devices
            # wait for a newer model: the last good one, stamped anew, is one to them.
            self._dirty.set()

    async def _deadlines(self, stop: asyncio.Event) -> None:
        """Flush at the round deadline (``aggregator.deadline``), on the wall clock."""
        deadline = self._deadline
        while not stop.is_set():
            due = deadline.due_at
            if due is None:
                await stop.wait()
            elif not deadline.expired(time.monotonic()):
                await wait_event(stop, due - time.monotonic())
            elif await self._on_worker(deadline.fire, time.monotonic(), self._flush):
                self._dirty.set()

    def _flush(self) -> bool:
        return self.intake.flush().new_version

    # -- model out --------------------------------------------------------------------

    async def _publisher(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        while await wait_any(self._dirty, stop) and not stop.is_set():
            await self._publish_model(client)
            await wait_event(stop, self.cfg.publish_interval)  # the rate limit

    async def _publish_model(self, client: aiomqtt.Client, *, export: bool = True) -> GlobalModel:
        self._dirty.clear()
        snap = await self._on_worker(lambda: self.intake.snapshot(publish=True))
        model = await self.publisher.publish_model(client, snap, export=export)
        if self.metrics is not None:
            sent = self.publisher.bytes_out
            self.metrics.published(model.version, sent - self._bytes_reported)
            self._bytes_reported = sent
            ev = self.last_eval
            self.metrics.evaluated(None if ev is None else ev.accuracy)
        async with self.version_published:
            self.version_published.notify_all()
        return model

    async def wait_for_version(self, version: int) -> None:
        """Until a model at least this new has been published (tests and the demo)."""
        async with self.version_published:
            await self.version_published.wait_for(lambda: self.published_version >= version)

    # -- status -----------------------------------------------------------------------

    def _status(self, state: str, snap: Snapshot | None = None, **why: Any) -> AggregatorStatus:
        s = snap or self.intake.snapshot()
        ev = self.last_eval
        counts = self.inbox.devices.counts()
        return AggregatorStatus(
            state=state,
            strategy=s.strategy,
            params=s.params,
            version=s.version,
            accepted=s.accepted,
            rejected=s.rejected,
            last_accuracy=None if ev is None else ev.accuracy,
            last_loss=None if ev is None else ev.loss,
            started_at=self.started_at,
            at=time.time(),
            run=self.publisher.run,
            reason=why.get("reason"),
            message=" ".join(str(why.get("message")).split())[:256] if why.get("message") else None,
            epsilon=s.epsilon,
            devices={state: counts.get(state, 0) for state in DEVICE_STATES},
        )

    async def _publish_status(self, client: aiomqtt.Client, state: str) -> None:
        snap = await self._on_worker(lambda: self.intake.snapshot(ledgers=True))
        payload = self._status(state, snap).encode()
        await client.publish(self.topics.aggregator_status, payload, qos=1, retain=True)
        # With the heartbeat, not with each model: at most one summary per status_interval.
        await self.publisher.publish_history(client)
        for ledger in snap.ledgers:
            topic = self.topics.aggregator_device(ledger.device)
            await client.publish(topic, ledger.encode(), qos=1, retain=True)

    async def _progress_loop(self, stop: asyncio.Event) -> None:
        """The progress line and the rejection summaries (``aggregator.progress``)."""
        snap = await self._on_worker(self.intake.snapshot)
        progress = Progress(log, self.cfg.progress_interval, accepted=snap.accepted)
        # A hair past due: the loop's timers may fire a clock tick early.
        while not await wait_event(stop, progress.due_in() + 0.01):
            snap = await self._on_worker(self.intake.snapshot)
            ev = self.last_eval
            accuracy = None if ev is None else ev.accuracy
            progress.tick(snap.version, accuracy, snap.accepted, self.inbox.devices.connected)
            await self._on_worker(self.counters.rejections.flush)

    async def _status_loop(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        while not await wait_event(stop, self.cfg.status_interval):  # a heartbeat
            await self._publish_status(client, "serving")
