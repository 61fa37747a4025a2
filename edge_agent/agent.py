"""The device service: pull the global model when ready, train on it, send the delta.

Pull on ready (``edge_agent.pull``): the agent asks for the retained model between runs,
subscribed only while it waits (throughout, when versions are rarer than runs): about
one download per run, not one per version. A model that arrives during a run (an
UNSUBSCRIBE in flight, or following) is trained on next; the run in progress is sent as
a (stale) update, as the server's staleness weighting discounts it and the compute is
spent. The same version republished later (a restarted aggregator) counts as new: the
agent trains on it again. At most one update is in flight: the next run starts only
after the broker acknowledged (QoS 1 PUBACK) the previous update.

Nothing received can stop the agent: a model that fails ``edge_agent.checks``, or a
run that fails (non-finite result, over ``max_train_seconds``), puts the retained status
in state ``error`` with a reason; the agent keeps its last good model and trains again
when a new one arrives. Training runs in a worker thread that checks a stop flag between
mini-batches, so SIGTERM ends it at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

import aiomqtt
import numpy as np

from edge_agent.checks import (
    Limits,
    check_result,
    follows,
    one_line,
    read_ledger,
    read_model,
    rng_for,
)
from edge_agent.config import AgentConfig
from edge_agent.data import LocalData
from edge_agent.datafile import DataFile, Loader, feature_stats
from edge_agent.mqttlog import MQTT_LOG
from edge_agent.pull import ModelPull
from edge_agent.state import SeqStore
from edge_agent.sysinfo import ProcessMeter
from fedmq._version import __version__
from fedmq.aio import TaskGroup, only, wait_any, wait_event
from fedmq.backoff import Backoff
from fedmq.chunks import ModelChunks, assemble, split
from fedmq.data import Dataset
from fedmq.errors import FedmqError, WireError
from fedmq.feedback import ErrorFeedback
from fedmq.identity import client_id
from fedmq.model import Weights
from fedmq.topics import Topics, parse
from fedmq.training import TrainStats, train_local
from fedmq.wire import DeviceStatus, GlobalModel, Update

log = logging.getLogger("fedmq.agent")


@dataclass
class AgentStats:
    """What an agent did, for the demo's summary and for tests."""

    updates_sent: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    models_received: int = 0
    model_downloads: int = 0  # every payload on model/global, good, bad or already held
    runs: int = 0  # training runs started, sent or not (one model download each, at best)
    bad_models: int = 0
    connects: int = 0


class Agent:
    pull = ModelPull  # how a session holds the model's subscription

    def __init__(
        self, cfg: AgentConfig, data: Dataset | LocalData, *, loader: Loader | None = None
    ) -> None:
        """``loader`` reads ``cfg.data`` again when the file changes (None: never)."""
        self.cfg = cfg
        self.local = data if isinstance(data, LocalData) else LocalData(None, data)
        self.data: Dataset | None = self.local.plain  # what the latest model trains on
        self.source = DataFile(self.local, cfg.data, loader)
        self.topics = Topics(cfg.fleet)
        self.seqs = SeqStore(cfg.state_dir)
        self.stats = AgentStats()
        self.rng = rng_for(cfg.seed, cfg.device)
        self.meter = ProcessMeter()
        self._latest: GlobalModel | None = None
        self._new_model = asyncio.Event()
        self._model_heard = asyncio.Event()  # a whole model handled: new, old or refused
        self._trained: GlobalModel | None = None  # the model last trained on
        self._last_loss: float | None = None
        self._state = "online"
        self._error: tuple[str, str] | None = None  # (reason, message) of the last refusal
        self.limits = Limits(cfg.max_epochs, cfg.max_batch)
        self.feedback = ErrorFeedback(cfg.error_feedback)
        self.connected = asyncio.Event()

    def _status(self, state: str) -> DeviceStatus:
        reason, message = self._error if state == "error" and self._error else (None, None)
        return DeviceStatus(
            device=self.cfg.device,
            state=state,
            agent_version=__version__,
            model_version=self._latest.version if self._latest else -1,
            samples=self.local.samples,
            last_seq=self.seqs.last,
            last_loss=self._last_loss,
            cpu=self.meter.cpu_percent(),
            rss=self.meter.rss_bytes(),
            at=time.time(),
            reason=reason,
            message=message,
        )

    @property
    def _resting(self) -> str:
        """The state between runs: ``error`` until a good model clears the last refusal."""
        return "error" if self._error else "idle"

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set: connect, reconnect with backoff, then go offline."""
        backoff = Backoff(self.cfg.backoff_base, self.cfg.backoff_cap)
        while not stop.is_set():
            try:
                await self._connected_session(stop)
                backoff.reset()
            except Exception as exc:
                if not only(exc, aiomqtt.MqttError):
                    raise
                self.connected.clear()
                delay = backoff.next()
                log.warning(
                    "broker %s unreachable (%s); retrying in %.1fs", self.cfg.broker.url, exc, delay
                )
                await wait_event(stop, delay)

    async def _connected_session(self, stop: asyncio.Event) -> None:
        will = aiomqtt.Will(
            self.topics.device_status(self.cfg.device),
            self._status("offline").encode(),
            qos=1,
            retain=True,
        )
        async with aiomqtt.Client(
            **self.cfg.broker.client_kwargs(),
            identifier=client_id(self.cfg.broker.username, f"fedmq-agent-{self.cfg.device}"),
            will=will,
            keepalive=self.cfg.keepalive,
            timeout=self.cfg.timeout,
            logger=MQTT_LOG,
        ) as client:
            self.stats.connects += 1
            await self._publish_status(client, "error" if self._error else "online")
            await self._publish_stats(client)
            # The ledger first: its retained seq then arrives before the retained model,
            # so a lost state file is resynced before the first update is numbered.
            await client.subscribe(self.topics.aggregator_device(self.cfg.device), qos=1)
            # The model, and its chunks when it is too large for one payload: subscribed
            # only while ready (edge_agent.pull); every session starts by asking for it.
            pull = self.pull(client, self.topics.model_global_filter, self.stats.model_downloads)
            await pull.open()
            self.connected.set()
            log.info("device %s connected to %s", self.cfg.device, self.cfg.broker.url)
            async with TaskGroup() as tg:
                receiver = tg.create_task(self._receive(client))
                trainer = tg.create_task(self._train_loop(client, pull, stop))
                watcher = tg.create_task(self._watch_data(client, stop))
                await stop.wait()
                # The trainer also ends by itself on ``stop``: aiomqtt's publish can swallow
                # a cancellation before Python 3.12 (asyncio.wait_for, CPython gh-86296).
                receiver.cancel()
                trainer.cancel()
                watcher.cancel()
            # A clean goodbye; the last will covers every other way of leaving.
            await self._publish_status(client, "offline")
            self.connected.clear()

    async def _publish_status(self, client: aiomqtt.Client, state: str) -> None:
        self._state = state
        payload = self._status(state).encode()
        await client.publish(
            self.topics.device_status(self.cfg.device), payload, qos=1, retain=True
        )

    async def _publish_stats(self, client: aiomqtt.Client) -> None:
        """Retained, so an aggregator that starts later finds them (docs/wire.md 3.7)."""
        rows = self.local.stats_rows()
        if not self.cfg.feature_stats or rows is None:
            return
        names, x = rows
        stats = feature_stats(x, names, device=self.cfg.device, digest=self.source.digest)
        await client.publish(self.topics.stats(self.cfg.device), stats.encode(), qos=1, retain=True)

    async def _watch_data(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        """Follow the data file: new content is trained on next and its statistics sent."""
        if self.cfg.data_poll <= 0:
            return
        while not await wait_event(stop, self.cfg.data_poll):
            if await asyncio.to_thread(self.source.reload):
                self.local = self.source.data
                self._use(self._fitting(self._latest))
                await self._publish_stats(client)

    def _fitting(self, model: GlobalModel | None) -> Dataset | None:
        """The data ``model`` trains on (before any model: the file as first read)."""
        if model is None:
            return self.local.plain
        try:
            return self.local.for_model(model.arch, model.version)
        except FedmqError as exc:
            self._record_error(exc.reason, exc.message)
            return None

    def _use(self, data: Dataset | None) -> bool:
        """Train on ``data`` from now on; True when its rows differ from before."""
        changed = data is not None and (self.data is None or data.x is not self.data.x)
        self.data = data
        return changed

    async def _receive(self, client: aiomqtt.Client) -> None:
        # Per session: retained chunks come again after a reconnect.
        pieces = ModelChunks(timeout=self.cfg.chunk_timeout)
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                continue
            self.stats.bytes_down += len(payload)
            try:
                where = parse(str(message.topic))
            except FedmqError:  # e.g. model/global/x: not a chunk topic, nothing of ours
                continue
            if where.kind == "model_global":  # a model or a manifest: one download
                self.stats.model_downloads += 1
                await self._on_model(client, bytes(payload), pieces)
            elif where.kind == "model_chunk" and payload:  # empty: a cleared chunk
                await self._on_model(client, bytes(payload), pieces, where.index)
            elif where.kind == "aggregator_device":
                self._on_ledger(bytes(payload))

    async def _on_model(
        self,
        client: aiomqtt.Client,
        payload: bytes,
        pieces: ModelChunks,
        index: int | None = None,
    ) -> None:
        """A whole model, its manifest, or chunk ``index`` of it."""
        try:
            whole = assemble(pieces, payload, index)
            if whole is None:
                return  # more pieces to come
            model = read_model(whole, None, self.limits)
            data = self.local.for_model(model.arch, model.version)
        except FedmqError as exc:
            self.stats.bad_models += 1
            self._record_error(exc.reason, exc.message)
            if self._state != "training":  # a run in progress reports it when it ends
                await self._publish_status(client, "error")
            self._model_heard.set()
            return
        self.stats.models_received += 1
        if follows(self._latest, model):
            self._latest = model
            self._error = None
            if self._use(data):  # read anew through the model's schema: in its order
                await self._publish_stats(client)
            self._new_model.set()
        self._model_heard.set()

    def _record_error(self, reason: str, message: str) -> None:
        """Remember why a model was refused or a run failed; the last good model stays."""
        self._error = (reason, one_line(message))
        log.warning("error [%s]: %s; waiting for the next model", reason, self._error[1])

    def _on_ledger(self, payload: bytes) -> None:
        try:
            ledger = read_ledger(payload, self.cfg.device)
        except FedmqError as exc:
            log.warning("ignoring a device ledger that failed checks: %s", exc)
            return
        before = self.seqs.resync(ledger.last_seq)
        if before is not None:
            log.warning(
                "seq resync: the aggregator has handled up to seq %d from %s, the local "
                "state (%s) would send %d; continuing at %d",
                ledger.last_seq,
                self.cfg.device,
                self.seqs.path,
                before,
                ledger.last_seq + 1,
            )

    async def _next_model(self, pull: ModelPull, stop: asyncio.Event) -> GlobalModel | None:
        """The model to train on next (None on ``stop``), subscribed only while waiting."""
        probed = False
        while not stop.is_set():
            self._new_model.clear()  # before the check: a model arriving after it sets it
            self._model_heard.clear()
            model = self._latest
            if model is not None and follows(self._trained, model):
                await pull.start_run(self.stats.model_downloads, self._trained, model)
                return self._latest  # a newer one may have come during the UNSUBSCRIBE
            if not probed and model is not None and pull.may_probe():
                probed = True  # a retained model exists; unanswered, subscribe instead
                await pull.probe()
                await wait_any(self._model_heard, stop, timeout=self.cfg.timeout)
                continue
            await pull.open()  # the broker answers: its retained model
            await wait_any(self._new_model, stop)
        return None

    async def _train_loop(
        self, client: aiomqtt.Client, pull: ModelPull, stop: asyncio.Event
    ) -> None:
        while (model := await self._next_model(pull, stop)) is not None:
            self.stats.runs += 1
            await self._publish_status(client, "training")
            update = await self._attempt(model)
            self._trained = model  # a failed run is not retried on the same model
            if update is not None:
                await self._send(client, update.encode())
            await self._publish_status(client, self._resting)

    async def _send(self, client: aiomqtt.Client, payload: bytes) -> None:
        """One update, in chunks when it exceeds ``max_payload``; back once all are acked."""
        topic, limit = self.topics.update(self.cfg.device), self.cfg.max_payload
        try:
            chunks = [] if limit is None else [c.encode() for c in split(payload, "update", limit)]
        except WireError as exc:  # a model too large for this max_payload: say so, live on
            self._record_error(exc.reason, f"the update cannot be sent: {exc.message}")
            return
        await asyncio.gather(*(client.publish(topic, p, qos=1) for p in chunks or [payload]))
        self.stats.updates_sent += 1
        self.stats.bytes_up += sum(map(len, chunks)) if chunks else len(payload)

    async def _attempt(self, model: GlobalModel) -> Update | None:
        """One run on ``model``: its update, or None after reporting why there is none."""
        try:
            return await self._train(model)
        except FedmqError as exc:
            reason, message = exc.reason, exc.message
        except OSError as exc:  # reserving the seq: a full or read-only disk
            reason, message = "state_write", f"cannot save the next seq: {exc}"
        except Exception as exc:  # whatever a received model provokes, the agent lives on
            log.exception("training on model v%d failed", model.version)
            reason, message = "train_failed", f"{type(exc).__name__}: {exc}"
        self._record_error(reason, f"model v{model.version}: {message}")
        return None

    def _local_run(self, model: GlobalModel, stop: threading.Event) -> tuple[Weights, TrainStats]:
        """Local training (in a worker thread, so keepalives go on)."""
        assert self.data is not None  # set with the model it fits
        # Huge weights overflow; check_result turns that into an error, not a warning.
        with np.errstate(all="ignore"):
            return train_local(
                model.arch,
                model.weights,
                self.data.x,
                self.data.y,
                model.hyper,
                self.rng,
                stop=stop,
                max_seconds=self.cfg.max_train_seconds,
                prep=model.prep,
            )

    async def _train(self, model: GlobalModel) -> Update:
        started = time.monotonic()
        stop = threading.Event()
        try:
            delta, stats = await asyncio.to_thread(self._local_run, model, stop)
        except asyncio.CancelledError:
            # The thread cannot be cancelled, and interpreter exit waits for it.
            stop.set()
            raise
        check_result(delta, stats)
        # A simulated device in the demo is slower than this machine by its compute delay.
        remaining = self.cfg.compute_delay - (time.monotonic() - started)
        if remaining > 0:
            await asyncio.sleep(remaining)
        self._last_loss = stats.loss
        seq = self.seqs.reserve()
        return self.feedback.encode(
            delta,
            encoding=self.cfg.encoding,
            bounded=model.hyper.dp_clip > 0,  # the aggregator's DP norm bound
            device=self.cfg.device,
            seq=seq,
            base_version=model.version,
            num_samples=stats.samples,
            steps=stats.steps,
            loss=stats.loss,
            metrics={"train_seconds": stats.seconds},
            sent_at=time.time(),
        )
