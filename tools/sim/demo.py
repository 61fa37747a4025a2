"""A real federated run on one machine: a broker, the aggregator and N devices.

Every device is a real edge agent with its own MQTT connection, its own data shard and
its own compute delay; the aggregator is the real daemon. Only the process is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aggregator.config import AggregatorConfig, StrategyConfig
from aggregator.service import Aggregator
from aggregator.strategies import make_strategy
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from fedmq.aio import TaskGroup, wait_event
from fedmq.config import BrokerConfig
from fedmq.data import Dataset
from fedmq.encodings import parse_encoding
from fedmq.errors import BrokerError, ConfigError
from fedmq.model import Weights, init_weights
from fedmq.training import Hyper, TrainStats
from fedmq.wire import GlobalModel, Update
from tools.sim.attacks import WIRE_ATTACKS, attack_update, pick_malicious, poison_nan, signflip
from tools.sim.delays import DelayModel
from tools.sim.partition import partition
from tools.sim.simulate import fleet_params
from tools.sim.tasks import Task, load_task

DEFAULT_TARGETS = {"digits": 0.92, "linreg": 0.0105}  # accuracy, or test MSE for linreg


@dataclass(frozen=True)
class DemoConfig:
    task: str = "digits"
    devices: int = 20
    strategy: str = StrategyConfig.strategy
    strategy_params: dict[str, Any] = field(default_factory=dict)
    broker: str | None = None  # an existing broker's URL; None starts one
    partition: str = "iid"
    delays: str = "lognormal:0.2,0.5"
    hyper: dict[str, Any] = field(default_factory=dict)
    target: float | None = None
    budget: float = 60.0  # wall-clock seconds
    round_deadline: float = 5.0
    encoding: str = "f32"
    seed: int = 0
    fleet: str = "demo"
    out_dir: Path = Path("runs/demo")
    malicious: float = 0.0  # fraction of devices that attack (see tools.sim.attacks.ATTACKS)
    attack: str = "signflip"
    defence: bool = StrategyConfig.defence

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ConfigError("bad_devices", "--devices must be at least 1")
        if not 0 <= self.malicious < 1:
            raise ConfigError("bad_malicious", "--malicious must be a fraction in [0, 1)")
        if self.attack not in WIRE_ATTACKS:
            raise ConfigError("bad_attack", f"--attack must be one of {', '.join(WIRE_ATTACKS)}")
        if not self.budget > 0:
            raise ConfigError("bad_budget", "--budget must be a positive number of seconds")
        parse_encoding(self.encoding, "--encoding")

    @property
    def goal(self) -> float:
        return DEFAULT_TARGETS[self.task] if self.target is None else self.target


class MaliciousAgent(Agent):
    """A real agent on the wire whose updates attack the model (``tools.sim.attacks.ATTACKS``)."""

    def __init__(self, cfg: AgentConfig, data: Dataset, *, attack: str) -> None:
        super().__init__(cfg, data)
        self.attack = attack

    def _local_run(self, model: GlobalModel, stop: threading.Event) -> tuple[Weights, TrainStats]:
        delta, stats = super()._local_run(model, stop)
        if self.attack == "signflip":
            delta = signflip(delta)
        elif self.attack in ("noise", "labelflip"):
            x, y = self.data.x, self.data.y
            args = (model.arch, model.weights, x, y, model.hyper, self.rng)
            delta = attack_update(self.attack, *args)
        return delta, stats

    async def _train(self, model: GlobalModel) -> Update:
        update = await super()._train(model)
        # The codec refuses to encode NaN; an attacker writes the bytes anyway.
        return poison_nan(update) if self.attack == "nan" else update


@dataclass(frozen=True)
class Reached:
    """When the target was first met, by which published version, with what metric."""

    elapsed: float
    version: int
    metric: float


@dataclass
class Snapshot:
    """What the live display shows, taken twice a second."""

    elapsed: float
    version: int
    metric: float | None
    updates_applied: int
    updates_per_s: float
    online: int
    devices: int


@contextlib.asynccontextmanager
async def _broker(url: str | None) -> AsyncIterator[tuple[BrokerConfig, str]]:
    if url is not None:
        yield BrokerConfig.from_url(url), "external"
        return
    from tools.broker import EmbeddedBroker

    async with EmbeddedBroker(port=0) as embedded:
        yield BrokerConfig.from_url(embedded.url), "embedded"


def _shards(task: Task, cfg: DemoConfig, rng: np.random.Generator) -> list[Dataset]:
    parts = partition(cfg.partition, task.train.y, cfg.devices, rng)
    return [Dataset(task.train.x[idx], task.train.y[idx]) for idx in parts]


def _metric(task: Task, agg: Aggregator) -> float | None:
    ev = agg.last_eval
    if ev is None:
        return None
    return ev.accuracy if task.arch.is_classifier else ev.loss


def _reached(task: Task, value: float | None, goal: float) -> bool:
    if value is None:
        return False
    return value >= goal if task.arch.is_classifier else value <= goal


async def run_demo(
    cfg: DemoConfig, progress: Callable[[Snapshot], None] | None = None
) -> dict[str, Any]:
    """Run the federation until the target or the budget; return the summary."""
    task = load_task(cfg.task, seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    hyper = Hyper(**(task.hyper.__dict__ | cfg.hyper))
    shards = _shards(task, cfg, rng)
    delays = DelayModel.parse(cfg.delays).per_device(cfg.devices, rng)
    params = fleet_params(cfg.strategy, cfg.devices, cfg.strategy_params)
    strategy = make_strategy(
        cfg.strategy, init_weights(task.arch, cfg.seed), 0, defence=cfg.defence, **params
    )
    bad = set(pick_malicious(cfg.devices, cfg.malicious, cfg.seed))
    out = cfg.out_dir
    for owned in ("aggregator", "agents"):  # a fresh run: only the folders the demo owns
        shutil.rmtree(out / owned, ignore_errors=True)
    async with _broker(cfg.broker) as (broker, broker_kind):
        agg = Aggregator(
            AggregatorConfig(
                broker=broker,
                fleet=cfg.fleet,
                out_dir=out / "aggregator",
                round_deadline=cfg.round_deadline,
                standardize=False,  # the tasks' features are standardized already
            ),
            strategy,
            task.arch,
            hyper,
            evalset=task.test,
        )
        agents = [
            (MaliciousAgent if i in bad else Agent)(
                AgentConfig(
                    broker=broker,
                    device=f"dev-{i:03d}",
                    fleet=cfg.fleet,
                    state_dir=out / "agents" / f"dev-{i:03d}",
                    compute_delay=float(delays[i]),
                    encoding=cfg.encoding,
                    seed=cfg.seed * 1000 + i,
                    backoff_base=0.05,
                ),
                shards[i],
                **({"attack": cfg.attack} if i in bad else {}),
            )
            for i in range(cfg.devices)
        ]
        started = time.monotonic()
        reached = await _serve(cfg, task, agg, agents, started, progress)
        wall = time.monotonic() - started
    onnx_path = agg.onnx_path if agg.onnx_path.exists() else None
    return _summary(cfg, task, agg, agents, broker, broker_kind, wall, reached, onnx_path)


async def _serve(
    cfg: DemoConfig,
    task: Task,
    agg: Aggregator,
    agents: list[Agent],
    started: float,
    progress: Callable[[Snapshot], None] | None,
) -> Reached | None:
    stop = asyncio.Event()
    reached_at: Reached | None = None
    served = True
    async with TaskGroup() as tg:
        tg.create_task(agg.run(stop))
        # Subscribed, not serving: the first model waits for the devices' statistics.
        if not await wait_event(agg.subscribed, 15):
            served = False
            stop.set()  # the error is raised below, outside the group, unwrapped
        else:
            for agent in agents:
                tg.create_task(agent.run(stop))
            reached_at = await _watch(cfg, task, agg, agents, started, progress)
            stop.set()
    if not served:
        raise BrokerError("no_broker", f"the aggregator could not reach {agg.cfg.broker.url}")
    return reached_at


async def _watch(
    cfg: DemoConfig,
    task: Task,
    agg: Aggregator,
    agents: list[Agent],
    started: float,
    progress: Callable[[Snapshot], None] | None,
) -> Reached | None:
    """Refresh the display until the target is reached or the budget is spent."""
    last_applied, last_t = 0, started
    while True:
        await asyncio.sleep(0.5)  # the display's refresh rate
        now = time.monotonic()
        metric = _metric(task, agg)
        applied = agg.counters.accepted
        if progress:
            progress(
                Snapshot(
                    elapsed=now - started,
                    version=agg.published_version,
                    metric=metric,
                    updates_applied=applied,
                    updates_per_s=(applied - last_applied) / max(now - last_t, 1e-9),
                    online=sum(a.connected.is_set() for a in agents),
                    devices=len(agents),
                )
            )
        last_applied, last_t = applied, now
        if metric is not None and _reached(task, metric, cfg.goal):
            return Reached(now - started, agg.published_version, metric)
        if now - started >= cfg.budget:
            return None


def _summary(
    cfg: DemoConfig,
    task: Task,
    agg: Aggregator,
    agents: list[Agent],
    broker: BrokerConfig,
    broker_kind: str,
    wall: float,
    reached: Reached | None,
    onnx_path: Path | None,
) -> dict[str, Any]:
    from fedmq.model import accuracy, loss

    w = agg.strategy.weights
    out: dict[str, Any] = {
        "task": cfg.task,
        "strategy": cfg.strategy,
        "strategy_params": agg.strategy.params(),
        "devices": cfg.devices,
        "broker": f"{broker_kind} {broker.url}",
        "versions": agg.strategy.version,
        "updates_applied": agg.counters.accepted,
        "updates_rejected": sum(agg.counters.rejected.values()),
        "rejected_by_reason": dict(sorted(agg.counters.rejected.items())),
        "malicious": cfg.malicious,
        "attack": cfg.attack if cfg.malicious else None,
        "defence": cfg.defence,
    }
    test = task.test
    if task.arch.is_classifier:
        out["test_accuracy"] = round(accuracy(task.arch, w, test.x, test.y), 4)
    else:
        out["w"] = round(float(w["w0"][0, 0]), 4)
        out["b"] = round(float(w["b0"][0]), 4)
        out["loss"] = round(loss(task.arch, w, test.x, test.y), 6)
    out["target"] = cfg.goal
    out["wall_s"] = round(wall, 2)
    out["time_to_target_s"] = None if reached is None else round(reached.elapsed, 2)
    # Devices keep sending until they are stopped, so the final model (above) may sit a
    # little either side of the version that first met the target.
    out["target_met_by"] = (
        None
        if reached is None
        else {"version": reached.version, "metric": round(reached.metric, 4)}
    )
    out["bytes_up"] = sum(a.stats.bytes_up for a in agents)
    out["bytes_down"] = sum(a.stats.bytes_down for a in agents)
    out["onnx_path"] = str(onnx_path) if onnx_path else None
    return out
