"""The agent's feature statistics over a real Mosquitto: at start, and when its data changes."""

from __future__ import annotations

import asyncio
import os

import agent_helpers as h
import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.checks import rng_for
from edge_agent.config import AgentConfig
from edge_agent.data import LocalData
from fedmq.config import BrokerConfig
from fedmq.data import save_npz
from fedmq.featurestats import FeatureStats
from fedmq.preprocess import Standardizer
from fedmq.topics import Topics
from fedmq.wire import GlobalModel, Update

pytestmark = pytest.mark.broker


async def test_stats_are_retained_at_start_and_sent_again_when_the_file_changes(
    mosquitto, fleet, tmp_path
):
    topics = Topics(fleet)
    path = tmp_path / "local.npz"
    save_npz(path, h.data(60, seed=0))
    cfg = AgentConfig(
        broker=BrokerConfig.from_url(mosquitto.url),
        device="pi-1",
        fleet=fleet,
        state_dir=tmp_path / "state",
        data=path,
        data_poll=0.05,
    )

    def load(p):  # as edge_agent.main reads the file
        return LocalData.open(p, cfg.label, cfg.task)

    agent = Agent(cfg, load(path), loader=load)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    async with h.client(mosquitto.url, topics.stats("pi-1")) as observer:
        first = FeatureStats.decode(bytes((await h.next_message(observer, "#")).payload))
        assert first.count == 60 and first.width == 4
        np.testing.assert_allclose(first.moments().mean, h.data(60).x.mean(0), rtol=1e-6)
        # Touching the file with the same bytes sends nothing; new rows do.
        os.utime(path)
        save_npz(path, h.data(90, seed=1))
        second = FeatureStats.decode(bytes((await h.next_message(observer, "#")).payload))
        assert second.count == 90 and second.digest != first.digest and second.at >= first.at
    # Retained: a late subscriber gets the latest.
    async with h.client(mosquitto.url, topics.stats("pi-1")) as late:
        retained = await h.next_message(late, "#")
        assert retained.retain and FeatureStats.decode(bytes(retained.payload)).count == 90
    stop.set()
    await task
    assert len(agent.data) == 90


async def test_the_agent_trains_on_the_models_standardized_features(mosquitto, fleet, tmp_path):
    """Raw features 1e4 away from zero; the model's prep brings them back to unit scale."""
    topics = Topics(fleet)
    raw = h.data(60)
    offset, scale = np.float32(1e4), np.float32(1e3)
    cfg = h.agent(mosquitto.url, fleet, tmp_path).cfg
    agent = Agent(cfg, type(raw)(raw.x * scale + offset, raw.y))
    prep = Standardizer(np.full(4, offset), np.full(4, scale))
    from fedmq.model import init_weights
    from fedmq.training import Hyper, train_local

    weights = init_weights(h.ARCH, 0)
    model = GlobalModel.build(0, h.ARCH, weights, Hyper(), run=h.RUN, created_at=1.0, prep=prep)
    async with h.client(mosquitto.url, topics.updates_filter) as observer:
        await observer.publish(topics.model_global, model.encode(), qos=1, retain=True)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        update = Update.decode(
            bytes((await h.next_message(observer, topics.updates_filter)).payload)
        )
        stop.set()
        await task
    # The same run on the unscaled data, from the same seed, gives the same delta.
    rng = rng_for(cfg.seed, cfg.device)  # the agent's own draws
    want, _ = train_local(h.ARCH, weights, raw.x, raw.y, Hyper(), rng)
    for name, delta in update.dense_delta().items():
        np.testing.assert_allclose(delta, want[name], atol=1e-3)


async def test_text_labels_do_not_hold_back_the_statistics(mosquitto, fleet, tmp_path):
    """A CSV with class names sends its named statistics before any model (and schema)."""
    topics = Topics(fleet)
    path = tmp_path / "local.csv"
    rows = [(20.5 + i, 100.0 * i, 0.4, "warm" if i % 2 else "cold") for i in range(30)]
    path.write_text(
        "humidity,lux,temp,kind\n"  # not the schema's order: the names say which is which
        + "".join(f"{h},{lux},{t},{k}\n" for t, lux, h, k in rows)
    )
    local = LocalData.open(path, "kind", "classification")
    assert local.plain is None  # the labels need the model's schema
    cfg = h.agent(mosquitto.url, fleet, tmp_path, data=path).cfg
    agent = Agent(cfg, local)
    stop = asyncio.Event()
    async with h.client(mosquitto.url, topics.stats("pi-1")) as observer:
        task = asyncio.create_task(agent.run(stop))
        stats = FeatureStats.decode(bytes((await h.next_message(observer, "#")).payload))
        stop.set()
        await task
    assert stats.features == ["humidity", "lux", "temp"] and stats.count == 30
    np.testing.assert_allclose(stats.moments().mean, [0.4, 1450.0, 35.0], rtol=1e-6)
    ordered = stats.in_order(["temp", "lux", "humidity"])
    np.testing.assert_allclose(ordered.moments().mean, [35.0, 1450.0, 0.4], rtol=1e-6)
