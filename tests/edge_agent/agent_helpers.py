"""Helpers the edge agent's broker tests share: data, models, observers, agents."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from fedmq.config import BrokerConfig
from fedmq.data import Dataset, save_npz
from fedmq.model import Arch, init_weights
from fedmq.training import Hyper
from fedmq.wire import DeviceStatus, GlobalModel

ARCH = Arch("mlp", (4, 8, 3))
RUN = "0123456789abcdef"


def data(n: int = 60, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    return Dataset(x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64))


def model(version: int, created_at: float = 1.0, hyper: Hyper | None = None) -> bytes:
    weights = init_weights(ARCH, version)
    return GlobalModel.build(
        version, ARCH, weights, hyper or Hyper(), run=RUN, created_at=created_at
    ).encode()


@asynccontextmanager
async def client(url: str, *topics: str) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(**BrokerConfig.from_url(url).client_kwargs()) as c:
        for topic in topics:
            await c.subscribe(topic, qos=1)
        yield c


async def next_message(c: aiomqtt.Client, topic: str, timeout: float = 10.0) -> aiomqtt.Message:
    async def first() -> aiomqtt.Message:
        async for message in c.messages:
            if message.topic.matches(topic):
                return message
        raise AssertionError("the connection closed")

    return await asyncio.wait_for(first(), timeout)


async def status_until(
    c: aiomqtt.Client, topic: str, state: str, timeout: float = 10.0
) -> DeviceStatus:
    while True:
        status = DeviceStatus.decode(bytes((await next_message(c, topic, timeout)).payload))
        if status.state == state:
            return status


def agent(
    url: str,
    fleet: str,
    state_dir: Path,
    device: str = "pi-1",
    cls: type[Agent] = Agent,
    **cfg: Any,
) -> Agent:
    """An agent of ``cls`` (a test's subclass) on ``data()``, with settings ``cfg``."""
    config = AgentConfig(
        broker=BrokerConfig.from_url(url),
        device=device,
        fleet=fleet,
        state_dir=state_dir,
        seed=1,
        **cfg,
    )
    return cls(config, data())


def spawn_agent(
    url: str, fleet: str, tmp_path: Path, rows: int = 60, device: str = "pi-9"
) -> subprocess.Popen[bytes]:
    """``python -m edge_agent`` as a device runs it, on ``rows`` rows of data."""
    path = tmp_path / "data.npz"
    save_npz(path, data(rows))
    cmd = [sys.executable, "-m", "edge_agent", "--broker", url, "--fleet", fleet]
    cmd += ["--device", device, "--data", str(path), "--state-dir", str(tmp_path / "state")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, env=env)


async def while_running(task: asyncio.Task[Any], awaitable: Any) -> Any:
    """Await ``awaitable``, failing with the agent's own error should ``task`` end first."""
    waiter = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        task.result()  # raises what killed the agent
        raise AssertionError("the agent stopped by itself")
    return waiter.result()
