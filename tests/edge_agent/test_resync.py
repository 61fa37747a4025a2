"""Seq resync: an agent that lost its state file continues after the aggregator's ledger.

Before, a device whose state file was lost restarted at seq 0 and every update it sent
was dropped as ``old_seq`` (issue 10, finding 6). These tests run a real aggregator and
real agents over Mosquitto, damage the state file between two runs, and require the
second run's updates to be accepted.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import agent_helpers as h
import pytest

from aggregator.config import AggregatorConfig
from aggregator.service import Aggregator
from aggregator.strategies import make_strategy
from edge_agent.state import STATE_FILE
from fedmq.config import BrokerConfig
from fedmq.model import init_weights
from fedmq.topics import Topics
from fedmq.training import Hyper
from fedmq.wire import DeviceLedger

pytestmark = pytest.mark.broker


def _aggregator(url: str, fleet: str, out: Path) -> Aggregator:
    cfg = AggregatorConfig(
        broker=BrokerConfig.from_url(url),
        fleet=fleet,
        out_dir=out,
        status_interval=0.2,
        export_onnx=False,
    )
    return Aggregator(cfg, make_strategy("fedasync", init_weights(h.ARCH, 0), 0), h.ARCH, Hyper())


async def _ledger_until(observer, topic: str, last_seq: int) -> DeviceLedger:
    while True:
        ledger = DeviceLedger.decode(bytes((await h.next_message(observer, topic)).payload))
        if ledger.last_seq >= last_seq:
            return ledger


def _damage(state: Path, how: str) -> None:
    path = state / STATE_FILE
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:5])
    else:
        path.write_bytes(b"\x00\xffnot json at all")


@pytest.mark.parametrize("how", ["deleted", "truncated", "garbage"])
async def test_a_lost_state_file_resyncs_from_the_aggregators_ledger(
    mosquitto, fleet, tmp_path, caplog, how
):
    topics = Topics(fleet)
    ledger_topic = topics.aggregator_device("pi-1")
    agg = _aggregator(mosquitto.url, fleet, tmp_path / "aggregator")
    agg_stop = asyncio.Event()
    agg_task = asyncio.create_task(agg.run(agg_stop))
    state = tmp_path / "state"
    async with h.client(mosquitto.url, ledger_topic) as observer:
        await asyncio.wait_for(agg.wait_for_version(0), 15)
        # First life: FedAsync makes a version of every update, so the agent keeps going.
        stop = asyncio.Event()
        first = h.agent(mosquitto.url, fleet, state)
        task = asyncio.create_task(first.run(stop))
        await asyncio.wait_for(agg.wait_for_version(3), 30)
        stop.set()
        await task
        sent = first.seqs.last
        await _ledger_until(observer, ledger_topic, sent)  # every update was accepted
        _damage(state, how)
        # Second life, from a lost or damaged state file.
        version = agg.strategy.version
        stop = asyncio.Event()
        with caplog.at_level(logging.INFO, logger="fedmq.agent"):
            second = h.agent(mosquitto.url, fleet, state)
            task = asyncio.create_task(second.run(stop))
            await asyncio.wait_for(agg.wait_for_version(version + 2), 30)
            stop.set()
            await task
    agg_stop.set()
    await agg_task
    assert agg.counters.rejected.get("old_seq", 0) == 0, agg.counters.rejected
    assert agg.counters.devices["pi-1"].last_seq > sent
    assert second.stats.updates_sent >= 2
    resync = [r.getMessage() for r in caplog.records if "seq resync" in r.getMessage()]
    assert len(resync) == 1 and f"continuing at {sent + 1}" in resync[0]
