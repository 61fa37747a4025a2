"""The edge agent against a real Mosquitto: updates, seq across restarts, status, last will."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import agent_helpers as h
import numpy as np
import pytest

from edge_agent.agent import Backoff
from fedmq.model import Arch, init_weights
from fedmq.topics import Topics
from fedmq.training import Hyper
from fedmq.wire import DeviceStatus, GlobalModel, Update

pytestmark = pytest.mark.broker


async def test_agent_trains_on_the_retained_model_and_sends_its_delta(mosquitto, fleet, tmp_path):
    topics = Topics(fleet)
    status = topics.device_status("pi-1")
    async with h.client(mosquitto.url, topics.updates_filter, status) as observer:
        await observer.publish(topics.model_global, h.model(3), qos=1, retain=True)
        stop = asyncio.Event()
        agent = h.agent(mosquitto.url, fleet, tmp_path)
        task = asyncio.create_task(agent.run(stop))
        message = await h.next_message(observer, topics.updates_filter)
        # "idle" follows the broker's acknowledgement of the update.
        idle = await h.status_until(observer, status, "idle")
        stop.set()
        await task
    update = Update.decode(bytes(message.payload), shapes=h.ARCH.param_shapes())
    assert str(message.topic) == topics.update("pi-1")
    assert (update.device, update.seq, update.base_version) == ("pi-1", 0, 3)
    assert update.num_samples == 60 and update.steps > 0
    assert any(np.abs(d).max() > 0 for d in update.dense_delta().values())
    assert agent.stats.updates_sent == 1 and agent.stats.bytes_up == len(message.payload)
    assert (idle.last_seq, idle.model_version, idle.samples) == (0, 3, 60)


async def test_a_topk_agent_sends_indices_and_values_and_keeps_the_rest(mosquitto, fleet, tmp_path):
    topics = Topics(fleet)
    async with h.client(mosquitto.url, topics.updates_filter) as observer:
        await observer.publish(topics.model_global, h.model(3), qos=1, retain=True)
        stop = asyncio.Event()
        agent = h.agent(mosquitto.url, fleet, tmp_path, encoding="topk:0.25")
        task = asyncio.create_task(agent.run(stop))
        message = await h.next_message(observer, topics.updates_filter)
        stop.set()
        await task
    update = Update.decode(bytes(message.payload), shapes=h.ARCH.param_shapes())
    assert update.encoding == "topk"
    for name, shape in h.ARCH.param_shapes().items():
        n = int(np.prod(shape))
        assert update.indices[name].dtype == np.uint16 and len(update.indices[name]) == -(-n // 4)
        # What was not sent waits in the residual for the next update (error feedback).
        kept = agent.feedback.residual[name].reshape(-1)[update.indices[name]]
        assert not kept.any() or np.abs(kept).max() < 1e-3
    assert any(np.abs(r).max() > 0 for r in agent.feedback.residual.values())


async def test_a_restarted_agent_continues_its_seq(mosquitto, fleet, tmp_path):
    topics = Topics(fleet)
    seqs = []
    async with h.client(mosquitto.url, topics.updates_filter) as observer:
        await observer.publish(topics.model_global, h.model(0), qos=1, retain=True)
        for _ in range(3):  # each run trains once on the retained model, then stops
            stop = asyncio.Event()
            task = asyncio.create_task(h.agent(mosquitto.url, fleet, tmp_path).run(stop))
            update = Update.decode(
                bytes((await h.next_message(observer, topics.updates_filter)).payload)
            )
            seqs.append(update.seq)
            stop.set()
            await task
    assert seqs == [0, 1, 2]


async def test_a_model_for_other_features_is_ignored_not_fatal(mosquitto, fleet, tmp_path):
    topics = Topics(fleet)
    other = Arch("mlp", (5, 3))
    wrong = GlobalModel.build(1, other, init_weights(other, 0), Hyper(), run=h.RUN).encode()
    async with h.client(mosquitto.url, topics.updates_filter) as observer:
        stop = asyncio.Event()
        agent = h.agent(mosquitto.url, fleet, tmp_path)
        task = asyncio.create_task(agent.run(stop))
        await agent.connected.wait()
        await observer.publish(topics.model_global, b"\x00garbage", qos=1)
        await observer.publish(topics.model_global, wrong, qos=1)
        await observer.publish(topics.model_global, h.model(2), qos=1)
        update = Update.decode(
            bytes((await h.next_message(observer, topics.updates_filter)).payload)
        )
        stop.set()
        await task
    assert update.base_version == 2
    assert agent.stats.bad_models == 2


async def test_a_republished_version_prompts_a_new_run(mosquitto, fleet, tmp_path):
    # A restarted aggregator republishes its version; updates sent while it was away may
    # be lost, so the agent trains again instead of waiting for a version that never comes.
    topics = Topics(fleet)
    async with h.client(mosquitto.url, topics.updates_filter) as observer:
        await observer.publish(topics.model_global, h.model(4, created_at=1.0), qos=1, retain=True)
        stop = asyncio.Event()
        agent = h.agent(mosquitto.url, fleet, tmp_path)
        task = asyncio.create_task(agent.run(stop))
        first = Update.decode(
            bytes((await h.next_message(observer, topics.updates_filter)).payload)
        )
        await observer.publish(topics.model_global, h.model(4, created_at=2.0), qos=1, retain=True)
        second = Update.decode(
            bytes((await h.next_message(observer, topics.updates_filter)).payload)
        )
        stop.set()
        await task
    assert (first.base_version, second.base_version) == (4, 4)
    assert second.seq == first.seq + 1


async def test_killing_an_agent_marks_it_offline_through_its_last_will(mosquitto, fleet, tmp_path):
    status = Topics(fleet).device_status("pi-9")
    async with h.client(mosquitto.url, status) as observer:
        proc = h.spawn_agent(mosquitto.url, fleet, tmp_path)
        try:
            online = await h.status_until(observer, status, "online")
            proc.kill()  # no goodbye: only the broker's last will can say it left
            killed = time.monotonic()
            offline = await h.status_until(observer, status, "offline")
            took = time.monotonic() - killed
        finally:
            proc.kill()
            proc.communicate()
    assert online.device == offline.device == "pi-9"
    assert took < 5.0
    # The retained status stays offline for anyone who looks later.
    async with h.client(mosquitto.url, status) as late:
        retained = await h.next_message(late, status, timeout=2)
    assert retained.retain and DeviceStatus.decode(bytes(retained.payload)).state == "offline"


async def test_sigterm_publishes_offline_and_exits_cleanly(mosquitto, fleet, tmp_path):
    status = Topics(fleet).device_status("pi-9")
    async with h.client(mosquitto.url, status) as observer:
        proc = h.spawn_agent(mosquitto.url, fleet, tmp_path)
        try:
            await h.status_until(observer, status, "online")
            proc.send_signal(signal.SIGTERM)
            offline = await h.status_until(observer, status, "offline")
            rc = await asyncio.to_thread(proc.wait, 10)
        finally:
            proc.kill()
            stderr = proc.communicate()[1].decode()
    assert rc == 0, stderr
    assert "Traceback" not in stderr
    assert offline.last_seq >= -1


def test_missing_data_is_a_clear_error_not_a_traceback(tmp_path):
    cmd = [sys.executable, "-m", "edge_agent", "--broker", "mqtt://127.0.0.1:1"]
    cmd += ["--device", "pi-1", "--data", str(tmp_path / "nope.csv")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "nope.csv" in proc.stderr


def test_backoff_is_jittered_exponential_and_capped():
    import random

    b = Backoff(0.5, 4.0, random.Random(0))
    delays = [b.next() for _ in range(10)]
    assert all(0 <= d <= min(4.0, 0.5 * 2**i) for i, d in enumerate(delays))
    assert len(set(delays)) == len(delays)  # jittered: no two agents retry in lockstep
    b.reset()
    assert b.next() <= 0.5
