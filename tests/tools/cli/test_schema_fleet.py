"""A fleet on its own raw CSVs, end to end on real Mosquitto, as a user runs it:
``fedmq data schema`` → schema.json → ``fedmq aggregator --schema --model mlp:32 --eval``
and five ``fedmq agent --data device-i.csv`` (Dirichlet 0.5, shuffled column orders,
string class names). Nobody counts features or classes; the model carries the names."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from fedmq.config import BrokerConfig
from fedmq.schema import Schema
from fedmq.topics import Topics
from fedmq.wire import AggregatorStatus, DeviceStatus, GlobalModel
from tools.sim.rawdata import RawTable, raw_digits, write_fleet_csvs

FEDMQ = [sys.executable, "-c", "from tools.entry import main; main()"]
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DEVICES = 5
GOAL = 0.8  # raw pixels 0..16, no standardization yet


def _named_digits() -> RawTable:
    """The unscaled digits with their labels written as words."""
    t = raw_digits()
    return RawTable(t.name, t.features, t.label, t.x, np.array(NAMES, dtype=object)[t.labels])


async def _until(url: str, fleet: str, timeout: float) -> tuple[AggregatorStatus, GlobalModel]:
    topics = Topics(fleet)

    async def watch() -> tuple[AggregatorStatus, GlobalModel]:
        model = None
        async with aiomqtt.Client(**BrokerConfig.from_url(url).client_kwargs()) as c:
            await c.subscribe(topics.aggregator_status, qos=1)
            await c.subscribe(topics.model_global, qos=1)
            async for message in c.messages:
                if message.topic.matches(topics.model_global):
                    model = GlobalModel.decode(bytes(message.payload))
                    continue
                status = AggregatorStatus.decode(bytes(message.payload))
                if model is not None and (status.last_accuracy or 0.0) >= GOAL:
                    return status, model
        raise AssertionError("the connection closed")

    return await asyncio.wait_for(watch(), timeout)


async def _device_states(url: str, fleet: str) -> dict[str, DeviceStatus]:
    topics = Topics(fleet)
    out: dict[str, DeviceStatus] = {}
    async with aiomqtt.Client(**BrokerConfig.from_url(url).client_kwargs()) as c:
        await c.subscribe(topics.device_status_filter, qos=1)
        async for message in c.messages:
            status = DeviceStatus.decode(bytes(message.payload))
            out[status.device] = status
            if len(out) == DEVICES:
                return out
    raise AssertionError("the connection closed")


@pytest.mark.broker
async def test_raw_csvs_with_named_classes_train_through_a_schema(mosquitto, fleet, tmp_path):
    files = write_fleet_csvs(
        tmp_path / "data", _named_digits(), devices=DEVICES, alpha=0.5, shuffle_columns=True
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    made = subprocess.run(
        [*FEDMQ, "data", "schema", str(files.test), "--label", "digit", "--out", "schema.json"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    schema = Schema.load(tmp_path / "schema.json")
    assert schema.classes == tuple(sorted(NAMES)) and schema.n_features == 64

    logs = [(tmp_path / f"p{i}.log").open("wb") for i in range(DEVICES + 1)]
    common = ["--broker", mosquitto.url, "--fleet", fleet]
    agg = [*FEDMQ, "aggregator", *common, "--schema", "schema.json", "--model", "mlp:32"]
    agg += ["--eval", str(files.test), "--strategy", "fedasync", "--out-dir", "agg"]
    procs = [subprocess.Popen(agg, stderr=logs[0], cwd=tmp_path, env=env)]
    for i, path in enumerate(files.devices):
        cmd = [*FEDMQ, "agent", *common, "--device", f"dev{i}", "--data", str(path)]
        cmd += ["--state-dir", f"state{i}"]
        procs.append(subprocess.Popen(cmd, stderr=logs[i + 1], cwd=tmp_path, env=env))
    try:
        status, model = await _until(mosquitto.url, fleet, timeout=150)
        devices = await asyncio.wait_for(_device_states(mosquitto.url, fleet), 20)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.to_thread(proc.wait, 15) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for log in logs:
            log.close()
        errors = [Path(log.name).read_text() for log in logs]
    assert codes == [0] * len(procs), errors
    assert not any("Traceback" in e for e in errors), errors
    assert model.arch.schema == schema and model.arch.layers == (64, 32, 10)
    assert status.accepted > 0 and status.last_accuracy >= GOAL
    assert all(d.state in ("idle", "training") and d.reason is None for d in devices.values())
    assert sum(d.samples for d in devices.values()) == sum(
        len(p.read_text().splitlines()) - 1 for p in files.devices
    )
