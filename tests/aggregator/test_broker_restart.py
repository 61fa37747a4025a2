"""Mosquitto restarts (persistence on): devices and aggregator come back on their own."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from aggregator.config import AggregatorConfig
from aggregator.service import Aggregator
from aggregator.strategies import make_strategy
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from fedmq.config import BrokerConfig
from fedmq.data import Dataset
from fedmq.model import init_weights
from fedmq.training import Hyper
from tools.sim.partition import partition
from tools.sim.tasks import load_task

pytestmark = pytest.mark.broker


async def test_training_continues_after_a_broker_restart(mosquitto, fleet, tmp_path):
    task = load_task("digits")
    broker = BrokerConfig.from_url(mosquitto.url)
    agg = Aggregator(
        AggregatorConfig(broker=broker, fleet=fleet, out_dir=tmp_path / "agg"),
        make_strategy("fedasync", init_weights(task.arch, 0), 0),
        task.arch,
        Hyper(lr=0.05, epochs=1, batch=16),
        evalset=task.test,
    )
    parts = partition("iid", task.train.y, 5, np.random.default_rng(0))
    agents = [
        Agent(
            AgentConfig(
                broker=broker,
                device=f"dev{i}",
                fleet=fleet,
                state_dir=tmp_path / f"dev{i}",
                compute_delay=0.05,
                backoff_base=0.1,
                backoff_cap=2.0,
            ),
            Dataset(task.train.x[idx], task.train.y[idx]),
        )
        for i, idx in enumerate(parts)
    ]
    stop = asyncio.Event()
    jobs = [asyncio.create_task(agg.run(stop))]
    jobs += [asyncio.create_task(a.run(stop)) for a in agents]
    try:
        await asyncio.wait_for(agg.wait_for_version(5), 30)
        before = agg.strategy.version
        restarted = time.monotonic()
        await asyncio.to_thread(mosquitto.restart)  # stop (SIGTERM, db saved) and start again
        await asyncio.wait_for(agg.wait_for_version(before + 5), 60)
        recovered = time.monotonic() - restarted

        async def all_back() -> None:  # versions may come from the devices back first
            while not all(a.stats.connects >= 2 for a in agents):
                await asyncio.sleep(0.05)  # bounded below: every device comes back too

        await asyncio.wait_for(all_back(), 30)
    finally:
        stop.set()
        await asyncio.gather(*jobs)
    print(json.dumps({"broker_restart_recovery_s": round(recovered, 2)}))
    assert all(a.stats.connects >= 2 for a in agents)  # each device reconnected by itself
    assert agg.last_eval is not None and agg.last_eval.accuracy > 0.5
    assert recovered < 30
