"""The real aggregator and agents on the production broker, with their own credentials.

The ACL grants each role only its fleet's topics; this shows that is enough for the
services themselves (the persistent, manually acknowledged aggregator session included),
and that an agent of another fleet pointed at this one changes nothing in it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from provisioned import Secure, bounded

from aggregator.config import AggregatorConfig
from aggregator.service import Aggregator
from aggregator.strategies import make_strategy
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from fedmq.aio import TaskGroup
from fedmq.data import Dataset
from fedmq.model import Arch, init_weights
from fedmq.training import Hyper

pytestmark = pytest.mark.broker
ARCH = Arch("mlp", (4, 8, 3))


def _data(seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((60, 4)).astype(np.float32)
    return Dataset(x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64))


async def test_the_services_run_on_the_production_broker(secure: Secure, tmp_path: Path) -> None:
    fleet = secure.fleet
    agg = Aggregator(
        AggregatorConfig(broker=secure.config("aggregator"), fleet=fleet, out_dir=tmp_path / "a"),
        make_strategy("fedasync", init_weights(ARCH, 0), 0),
        ARCH,
        Hyper(),
    )

    def agent(user: str, in_fleet: str) -> Agent:
        cfg = AgentConfig(
            broker=secure.config(user),
            device=user,
            fleet=in_fleet,
            state_dir=tmp_path / user,
            seed=1,
        )
        return Agent(cfg, _data(len(user)))

    # dev-y belongs to the other fleet; pointed at this one, the broker drops all it sends.
    agents = [agent("dev-a", fleet), agent("dev-b", fleet), agent("dev-y", fleet)]
    stop = asyncio.Event()

    async def scenario() -> None:
        async with TaskGroup() as tg:
            tg.create_task(agg.run(stop))
            for a in agents:
                tg.create_task(a.run(stop))
            await agg.wait_for_version(4)
            stop.set()

    await bounded(scenario())
    sent = {a.cfg.device: a.stats.updates_sent for a in agents}
    assert sent["dev-a"] > 0 and sent["dev-b"] > 0, sent
    # The outsider never got this fleet's model, so it never trained, and the aggregator
    # heard from this fleet's devices alone.
    assert sent["dev-y"] == 0, sent
    assert set(agg.counters.devices) == {"dev-a", "dev-b"}
    assert agg.counters.accepted >= 4 and not agg.counters.rejected
