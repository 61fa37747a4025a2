"""A real aggregator and real agents over a broker, in one event loop, for fleet tests."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggregator.config import AggregatorConfig
from aggregator.service import Aggregator
from aggregator.strategies import make_strategy
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from fedmq.aio import TaskGroup
from fedmq.config import BrokerConfig
from fedmq.data import Dataset
from fedmq.model import Arch, init_weights
from fedmq.training import Hyper


@dataclass
class FleetRun:
    aggregator: Aggregator
    agents: list[Agent]
    seconds: float


async def run_fleet(
    url: str,
    fleet: str,
    out: Path,
    arch: Arch,
    shards: list[Dataset],
    *,
    versions: int,
    hyper: Hyper,
    evalset: Dataset | None = None,
    timeout: float = 120.0,
    strategy: str = "fedbuff",
    params: dict[str, Any] | None = None,
    **cfg: Any,
) -> FleetRun:
    """Serve until ``versions`` versions are published (or ``timeout``), then stop all."""
    broker = BrokerConfig.from_url(url)
    agg = Aggregator(
        AggregatorConfig(broker=broker, fleet=fleet, out_dir=out / "aggregator", **cfg),
        make_strategy(strategy, init_weights(arch, 0), 0, **(params or {})),
        arch,
        hyper,
        evalset=evalset,
    )
    agents = [
        Agent(
            AgentConfig(
                broker=broker,
                device=f"dev-{i}",
                fleet=fleet,
                state_dir=out / f"dev-{i}",
                seed=i,
                backoff_base=0.05,
            ),
            shard,
        )
        for i, shard in enumerate(shards)
    ]
    stop = asyncio.Event()
    started = time.monotonic()
    async with TaskGroup() as tg:
        tg.create_task(agg.run(stop))
        await asyncio.wait_for(agg.subscribed.wait(), 15)
        for agent in agents:
            tg.create_task(agent.run(stop))
        try:
            await asyncio.wait_for(agg.wait_for_version(versions), timeout)
        finally:
            stop.set()
    return FleetRun(agg, agents, time.monotonic() - started)
