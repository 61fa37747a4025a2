"""The aggregator's event loop never blocks: asyncio debug mode's slow-callback check.

The aggregator runs on an event loop of its own, in a thread of its own, in debug
mode with ``slow_callback_duration = 0.05``; twenty devices on the test's loop send
digits-size updates through a real Mosquitto. Every "Executing ... took" warning the
aggregator's loop logs is a callback that held it for more than 50 ms.

What it caught before the intake moved to its own thread: ``Aggregator._receive``
taking 0.54-0.56 s, or in another run a one-line ``_wait._on_completion`` taking
0.56 s: ``import onnx`` in the export thread held the GIL that long (the export now
runs in a process of its own). With the export off, the old intake on the loop
(decode, strategy, SQLite commit, checkpoint) stayed under 10 ms per message here.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Callable

import aiomqtt
import numpy as np
import pytest

from aggregator.config import AggregatorConfig
from aggregator.service import Aggregator
from aggregator.strategies import make_strategy
from fedmq.config import BrokerConfig
from fedmq.model import init_weights
from fedmq.topics import Topics
from fedmq.training import Hyper
from fedmq.wire import GlobalModel, Update
from tools.sim.tasks import load_task

pytestmark = pytest.mark.broker
DEVICES = 20
LOAD_S = 6.0
SLOW_S = 0.05


class _SlowCallbacks(logging.Handler):
    """asyncio's slow-callback warnings logged by one thread (the aggregator's loop)."""

    def __init__(self, thread: int) -> None:
        super().__init__(logging.WARNING)
        self.thread = thread
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread and record.getMessage().startswith("Executing"):
            self.found.append(record.getMessage())


class _AggregatorThread(threading.Thread):
    """Builds the aggregator and serves it, as ``fedmq aggregator`` does, on this thread."""

    def __init__(self, build: Callable[[], Aggregator]) -> None:
        super().__init__(name="aggregator-loop", daemon=True)
        self.build = build
        self.agg: Aggregator | None = None
        self.built = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.loop.set_debug(True)
        self.loop.slow_callback_duration = SLOW_S
        self.stop = asyncio.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.agg = self.build()
            self.built.set()
            self.loop.run_until_complete(self.agg.run(self.stop))
        except BaseException as exc:  # reported by the test, on its own thread
            self.error = exc
        finally:
            self.built.set()
            self.loop.close()

    def halt(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.stop.set)


async def _device(url: str, topics: Topics, name: str, version: list[int], stop, delta) -> None:
    rng = random.Random(name)
    async with aiomqtt.Client(**BrokerConfig.from_url(url).client_kwargs()) as client:
        seq = 0
        while not stop.is_set():
            update = Update.from_delta(
                delta, device=name, seq=seq, base_version=version[0],
                num_samples=72, steps=5, loss=0.5,
            )  # fmt: skip
            await client.publish(topics.update(name), update.encode(), qos=1)
            seq += 1
            await asyncio.sleep(rng.uniform(0.1, 0.3))  # a device's pace


async def _follow(url: str, topics: Topics, version: list[int], ready: asyncio.Event) -> None:
    async with aiomqtt.Client(**BrokerConfig.from_url(url).client_kwargs()) as client:
        await client.subscribe(topics.model_global, qos=1)
        ready.set()
        async for message in client.messages:
            version[0] = GlobalModel.decode(bytes(message.payload)).version


async def test_no_callback_blocks_the_loop_for_50ms_under_20_devices(mosquitto, fleet, tmp_path):
    task = load_task("digits")
    runner = _AggregatorThread(
        lambda: Aggregator(
            AggregatorConfig(broker=BrokerConfig.from_url(mosquitto.url), fleet=fleet,
                             out_dir=tmp_path, checkpoint_every=100, standardize=False),
            make_strategy("fedbuff", init_weights(task.arch, 0), 0, defence=True, k=10),
            task.arch,
            Hyper(),
            evalset=task.test,
        )
    )  # fmt: skip
    runner.start()
    await asyncio.to_thread(runner.built.wait, 30)
    agg = runner.agg
    assert agg is not None, runner.error
    slow = _SlowCallbacks(runner.ident or 0)
    logging.getLogger("asyncio").addHandler(slow)
    topics, version, ready, stop = Topics(fleet), [0], asyncio.Event(), asyncio.Event()
    rng = np.random.default_rng(0)
    delta = {k: (0.01 * rng.standard_normal(v.shape)).astype(np.float32)
             for k, v in init_weights(task.arch, 0).items()}  # fmt: skip
    follower = asyncio.create_task(_follow(mosquitto.url, topics, version, ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        serving = asyncio.run_coroutine_threadsafe(agg.serving.wait(), runner.loop)
        await asyncio.wait_for(asyncio.wrap_future(serving), 15)
        devices = [
            asyncio.create_task(
                _device(mosquitto.url, topics, f"dev-{i:02d}", version, stop, delta)
            )
            for i in range(DEVICES)
        ]
        await asyncio.sleep(LOAD_S)  # the load is the point: keep it on for this long
        stop.set()
        await asyncio.gather(*devices)
    finally:
        runner.halt()
        await asyncio.to_thread(runner.join, 30)
        follower.cancel()
        logging.getLogger("asyncio").removeHandler(slow)
    assert runner.error is None, runner.error
    assert agg.counters.accepted >= DEVICES * 10, agg.counters.accepted  # the load happened
    assert agg.strategy.version >= 10
    assert not slow.found, "\n".join(slow.found)
