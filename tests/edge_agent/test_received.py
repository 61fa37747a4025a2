"""Nothing an agent receives stops it: bad models and failed runs are an `error` status.

Each case runs a real agent against a real Mosquitto, publishes what an attacker or a
broken aggregator could retain on the model topic, and then a good model: the agent
must report the refusal, keep running, and train on the good model.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import agent_helpers as h
import numpy as np
import pytest

from fedmq.model import init_weights
from fedmq.topics import Topics
from fedmq.training import Hyper
from fedmq.wire import DeviceStatus, GlobalModel, Update, weights_digest

pytestmark = pytest.mark.broker


def _huge(version: int) -> bytes:
    # Finite, so it decodes; training on it overflows (issue 10, finding 1).
    weights = {k: (v + 1.0) * np.float32(1e30) for k, v in init_weights(h.ARCH, 0).items()}
    return GlobalModel.build(version, h.ARCH, weights, Hyper(), run=h.RUN, created_at=1.0).encode()


def _nan(version: int) -> bytes:
    weights = {k: v.copy() for k, v in init_weights(h.ARCH, 0).items()}
    weights["b0"][0] = np.inf
    digest = weights_digest(h.ARCH, weights)
    return GlobalModel(h.RUN, version, h.ARCH, weights, digest, Hyper(), 1.0).encode()


BAD = {
    "train_non_finite": _huge,
    "non_finite": _nan,
    "malformed": lambda v: b"\x93\x01\x02",
    "bad_kind": lambda v: DeviceStatus("x", "idle", "0", v, 1, 1, None, None, None, 1.0).encode(),
    "hyper_limit": lambda v: h.model(v, hyper=Hyper(epochs=1000, batch=1)),
}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def _until_cpu_busy(pid: int, seconds: float, timeout: float = 30.0) -> None:
    """Until process ``pid`` has used ``seconds`` more CPU time (Linux /proc)."""
    base, deadline = _cpu_seconds(pid), time.monotonic() + timeout
    while _cpu_seconds(pid) - base < seconds:
        assert time.monotonic() < deadline, "the agent never got busy"
        await asyncio.sleep(0.05)  # polling a counter; there is no event to await


@pytest.mark.parametrize("reason", sorted(BAD))
async def test_a_bad_retained_model_is_an_error_status_then_a_good_one_trains(
    broker, fleet, tmp_path, reason
):
    url, topics = broker.url, Topics(fleet)
    status = topics.device_status("pi-1")
    async with h.client(url, topics.updates_filter, status) as observer:
        await observer.publish(topics.model_global, BAD[reason](5), qos=1, retain=True)
        stop = asyncio.Event()
        agent = h.agent(url, fleet, tmp_path)
        task = asyncio.create_task(agent.run(stop))
        error = await h.while_running(task, h.status_until(observer, status, "error"))
        await observer.publish(topics.model_global, h.model(6), qos=1, retain=True)
        update = Update.decode(
            bytes((await h.next_message(observer, topics.updates_filter)).payload)
        )
        idle = await h.status_until(observer, status, "idle")
        stop.set()
        await task
    assert error.reason == reason and error.message and "\n" not in error.message
    # The first update is for the good model: nothing was sent for the bad one.
    assert (update.base_version, update.seq) == (6, 0)
    assert idle.reason is None and idle.model_version == 6


async def test_a_restart_on_a_bad_retained_model_is_an_error_again_not_a_crash_loop(
    mosquitto_session, fleet, tmp_path
):
    url, topics = mosquitto_session.url, Topics(fleet)
    status = topics.device_status("pi-1")
    async with h.client(url, status) as observer:
        await observer.publish(topics.model_global, _huge(7), qos=1, retain=True)
        for _ in range(2):
            stop = asyncio.Event()
            task = asyncio.create_task(h.agent(url, fleet, tmp_path).run(stop))
            error = await h.while_running(task, h.status_until(observer, status, "error"))
            assert error.reason == "train_non_finite"
            stop.set()
            await task  # a clean stop: the agent never raised


async def test_max_train_seconds_ends_a_long_run_with_an_error(mosquitto_session, fleet, tmp_path):
    url, topics = mosquitto_session.url, Topics(fleet)
    status = topics.device_status("pi-1")
    # 50 epochs of batch 1 over 60 rows is 3,000 steps; 1 ms is a small fraction of that.
    slow = h.model(3, hyper=Hyper(epochs=50, batch=1))
    async with h.client(url, topics.updates_filter, status) as observer:
        await observer.publish(topics.model_global, slow, qos=1, retain=True)
        stop = asyncio.Event()
        agent = h.agent(url, fleet, tmp_path, max_train_seconds=0.001)
        task = asyncio.create_task(agent.run(stop))
        error = await h.while_running(task, h.status_until(observer, status, "error"))
        stop.set()
        await task
    assert error.reason == "train_timeout" and "0.001 s" in error.message
    assert agent.stats.updates_sent == 0 and agent.seqs.last == -1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_sigterm_mid_training_exits_within_two_seconds(mosquitto, fleet, tmp_path):
    topics = Topics(fleet)
    status = topics.device_status("pi-9")
    # 20,000 rows x 50 epochs of batch 1: a million steps, minutes of training.
    long_run = h.model(1, hyper=Hyper(epochs=50, batch=1))
    async with h.client(mosquitto.url, status) as observer:
        await observer.publish(topics.model_global, long_run, qos=1, retain=True)
        proc = h.spawn_agent(mosquitto.url, fleet, tmp_path, rows=20_000)
        try:
            await h.status_until(observer, status, "training", timeout=30)
            # "training" is published just before the worker thread starts; its CPU use
            # is the sign that the run is really under way.
            await _until_cpu_busy(proc.pid, seconds=0.5)
            proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            rc = await asyncio.to_thread(proc.wait, 30)
            took = time.monotonic() - sent
            offline = await h.status_until(observer, status, "offline")
        finally:
            proc.kill()
            stderr = proc.communicate()[1].decode()
    assert took < 2.0, f"SIGTERM took {took:.1f}s"
    assert rc == 0 and "Traceback" not in stderr, stderr
    assert offline.last_seq == -1  # the interrupted run sent nothing
