"""One worker process of the ``scale`` benchmark: many real edge agents, each its own MQTT
connection, in one asyncio loop.

    python -m benchmarks.scale_worker --broker URL --fleet F --devices N --first I --count C
        --mode after|before --delays lognormal:2,0.5 --seed 0 --state-dir DIR --out FILE

Devices ``I .. I+C-1`` of a fleet of ``N``: the shards and compute delays are drawn for
the whole fleet from the seed (as ``fedmq demo`` draws them), so every worker split
gives every device the same data and speed. ``after`` runs ``edge_agent.agent.Agent``
as shipped (pull on ready, probing for the retained model between runs); ``hold`` the
same without the probe (subscribed from the end of a run until the next model is read);
``before`` subscribed to the model for the whole session, as agents were before issue 12.
The worker prints ``ready`` once every agent is connected, runs until SIGTERM, then
writes the agents' summed counters and its own RSS to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.pull import ModelPull
from fedmq.aio import TaskGroup
from fedmq.config import BrokerConfig
from fedmq.data import Dataset
from tools.sim.delays import DelayModel
from tools.sim.partition import partition
from tools.sim.tasks import load_task


class AlwaysSubscribed(ModelPull):
    """Before pull on ready: the subscription stays for the whole session, so every
    published version reaches the device, during its runs too."""

    async def start_run(self, downloads: int, trained: Any, model: Any) -> None:
        return None


class BeforeAgent(Agent):
    pull = AlwaysSubscribed


class HoldingPull(ModelPull):
    """Pull on ready without the probe: between runs the agent subscribes and holds the
    subscription until the model is read (as from b9bdbbe until the probe)."""

    def may_probe(self) -> bool:
        return False


class HoldingAgent(Agent):
    pull = HoldingPull


KINDS = {"before": BeforeAgent, "hold": HoldingAgent, "after": Agent}


def fleet_draws(devices: int, partition_spec: str, delays: str, seed: int) -> tuple[Any, Any]:
    """Every device's shard indices and compute delay, drawn for the whole fleet."""
    task = load_task("digits", seed=seed)
    rng = np.random.default_rng(seed)
    parts = partition(partition_spec, task.train.y, devices, rng)
    return task, (parts, DelayModel.parse(delays).per_device(devices, rng))


def rss_bytes() -> int:
    """This process's resident set now (``/proc``), not its peak."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--broker", required=True)
    p.add_argument("--fleet", required=True)
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--first", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--mode", choices=tuple(KINDS), default="after")
    p.add_argument("--partition", default="iid")
    p.add_argument("--delays", default="lognormal:2.0,0.5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    return p


async def serve(args: argparse.Namespace) -> dict[str, Any]:
    task, (parts, delays) = fleet_draws(args.devices, args.partition, args.delays, args.seed)
    base_rss = rss_bytes()
    broker = BrokerConfig.from_url(args.broker)
    kind = KINDS[args.mode]
    agents = []
    for i in range(args.first, args.first + args.count):
        cfg = AgentConfig(
            broker=broker,
            device=f"d{i:04d}",
            fleet=args.fleet,
            state_dir=args.state_dir / f"d{i:04d}",
            compute_delay=float(delays[i]),
            seed=args.seed * 100_000 + i,
            backoff_base=0.2,
            data_poll=0.0,
        )
        agents.append(kind(cfg, Dataset(task.train.x[parts[i]], task.train.y[parts[i]])))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with TaskGroup() as tg:
        for agent in agents:
            tg.create_task(agent.run(stop))
        await asyncio.wait([asyncio.ensure_future(a.connected.wait()) for a in agents])
        print("ready", flush=True)
        ready_at = time.time()
        await stop.wait()
        rss = rss_bytes()
    totals = {
        k: sum(getattr(a.stats, k) for a in agents)
        for k in ("updates_sent", "runs", "bytes_up", "bytes_down", "models_received")
    }
    return {
        "first": args.first,
        "count": args.count,
        "mode": args.mode,
        "ready_at": ready_at,
        "model_downloads": sum(a.stats.model_downloads for a in agents),
        "bad_models": sum(a.stats.bad_models for a in agents),
        "connects": sum(a.stats.connects for a in agents),
        **totals,
        "rss_base_bytes": base_rss,
        "rss_bytes": rss,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    report = asyncio.run(serve(args))
    args.out.write_text(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
