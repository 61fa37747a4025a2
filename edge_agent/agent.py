"""The device service: follow the global model, train on each new version, send the delta.

Policy for a model that arrives while training: the run in progress is finished and
sent as a (stale) update, because the server's staleness weighting already discounts
it and the compute is spent; the agent then trains on the newest version it holds,
skipping any in between. The same version republished later (a restarted aggregator)
counts as new: the agent trains on it again. At most one update is in flight: the next
run starts only after the broker acknowledged (QoS 1 PUBACK) the previous update.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiomqtt
import numpy as np

from edge_agent.config import AgentConfig
from edge_agent.state import SeqStore
from edge_agent.sysinfo import ProcessMeter
from fedmq._version import __version__
from fedmq.aio import TaskGroup, only, wait_any, wait_event
from fedmq.backoff import Backoff
from fedmq.data import Dataset
from fedmq.errors import FedmqError, WireError
from fedmq.model import Weights
from fedmq.topics import Topics
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
    bad_models: int = 0
    connects: int = 0


def _stamp(model: GlobalModel) -> tuple[int, float]:
    """Order of models: by version, then by publish time.

    An aggregator that restarts republishes its current version with a new
    ``created_at``; an update sent while it was away may be lost, so that republish is
    also a prompt to train again rather than wait for a version that may never come.
    """
    return (model.version, model.created_at)


class Agent:
    def __init__(self, cfg: AgentConfig, data: Dataset) -> None:
        self.cfg = cfg
        self.data = data
        self.topics = Topics(cfg.fleet)
        self.seqs = SeqStore(cfg.state_dir)
        self.stats = AgentStats()
        self.rng = np.random.default_rng(cfg.seed)
        self.meter = ProcessMeter()
        self._latest: GlobalModel | None = None
        self._new_model = asyncio.Event()
        self._trained: tuple[int, float] = (-1, 0.0)  # (version, created_at) last trained on
        self._last_loss: float | None = None
        self._state = "online"
        self.connected = asyncio.Event()

    def _status(self, state: str) -> DeviceStatus:
        return DeviceStatus(
            device=self.cfg.device,
            state=state,
            agent_version=__version__,
            model_version=self._latest.version if self._latest else -1,
            samples=len(self.data),
            last_seq=self.seqs.last,
            last_loss=self._last_loss,
            cpu=self.meter.cpu_percent(),
            rss=self.meter.rss_bytes(),
            at=time.time(),
        )

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
            identifier=f"fedmq-agent-{self.cfg.device}",
            will=will,
            keepalive=self.cfg.keepalive,
            timeout=self.cfg.timeout,
        ) as client:
            self.stats.connects += 1
            await self._publish_status(client, "online")
            await client.subscribe(self.topics.model_global, qos=1)
            self.connected.set()
            log.info("device %s connected to %s", self.cfg.device, self.cfg.broker.url)
            async with TaskGroup() as tg:
                receiver = tg.create_task(self._receive(client))
                trainer = tg.create_task(self._train_loop(client, stop))
                await stop.wait()
                # The trainer also ends by itself on ``stop``: aiomqtt's publish can swallow
                # a cancellation before Python 3.12 (asyncio.wait_for, CPython gh-86296).
                receiver.cancel()
                trainer.cancel()
            # A clean goodbye; the last will covers every other way of leaving.
            await self._publish_status(client, "offline")
            self.connected.clear()

    async def _publish_status(self, client: aiomqtt.Client, state: str) -> None:
        self._state = state
        payload = self._status(state).encode()
        await client.publish(
            self.topics.device_status(self.cfg.device), payload, qos=1, retain=True
        )

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                continue
            self.stats.bytes_down += len(payload)
            try:
                model = GlobalModel.decode(bytes(payload))
                if model.arch.n_inputs != self.data.x.shape[1]:
                    raise WireError(
                        "bad_shape",
                        f"model expects {model.arch.n_inputs} features, "
                        f"the data has {self.data.x.shape[1]}",
                    )
            except FedmqError as exc:
                self.stats.bad_models += 1
                log.warning("ignoring a global model that failed checks: %s", exc)
                continue
            self.stats.models_received += 1
            if self._latest is None or _stamp(model) > _stamp(self._latest):
                self._latest = model
                self._new_model.set()

    async def _train_loop(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        while await wait_any(self._new_model, stop) and not stop.is_set():
            self._new_model.clear()
            model = self._latest
            if model is None or _stamp(model) <= self._trained:
                continue
            await self._publish_status(client, "training")
            update = await self._train(model)
            self._trained = _stamp(model)
            payload = update.encode()
            await client.publish(self.topics.update(self.cfg.device), payload, qos=1)
            self.stats.updates_sent += 1
            self.stats.bytes_up += len(payload)
            await self._publish_status(client, "idle")

    def _local_run(self, model: GlobalModel) -> tuple[Weights, TrainStats]:
        """Local training (in a worker thread, so keepalives go on)."""
        return train_local(
            model.arch, model.weights, self.data.x, self.data.y, model.hyper, self.rng
        )

    async def _train(self, model: GlobalModel) -> Update:
        started = time.monotonic()
        delta, stats = await asyncio.to_thread(self._local_run, model)
        # A simulated device in the demo is slower than this machine by its compute delay.
        remaining = self.cfg.compute_delay - (time.monotonic() - started)
        if remaining > 0:
            await asyncio.sleep(remaining)
        self._last_loss = stats.loss
        seq = self.seqs.reserve()
        return Update.from_delta(
            delta,
            encoding=self.cfg.encoding,
            device=self.cfg.device,
            seq=seq,
            base_version=model.version,
            num_samples=stats.samples,
            steps=stats.steps,
            loss=stats.loss,
            metrics={"train_seconds": stats.seconds},
            sent_at=time.time(),
        )
