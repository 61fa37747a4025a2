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
from fedmq.preprocess import Standardizer
from fedmq.schema import Schema
from fedmq.topics import Topics
from fedmq.wire import AggregatorStatus, DeviceStatus, GlobalModel
from tools.sim.rawdata import (
    RawTable,
    centralized_logreg,
    raw_digits,
    sensor_readings,
    write_fleet_csvs,
)

FEDMQ = [sys.executable, "-c", "from tools.entry import main; main()"]
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DEVICES = 5
GOAL = 0.9  # centralized logistic regression on these files: 0.956


def _named_digits() -> RawTable:
    """The unscaled digits with their labels written as words."""
    t = raw_digits()
    return RawTable(t.name, t.features, t.label, t.x, np.array(NAMES, dtype=object)[t.labels])


async def _until(
    url: str, fleet: str, timeout: float, goal: float = GOAL, models: list | None = None
) -> tuple[AggregatorStatus, GlobalModel]:
    """The first status at ``goal`` accuracy, with the model then retained; every model
    seen on the way is appended to ``models``."""
    topics = Topics(fleet)

    async def watch() -> tuple[AggregatorStatus, GlobalModel]:
        model = None
        async with aiomqtt.Client(**BrokerConfig.from_url(url).client_kwargs()) as c:
            await c.subscribe(topics.aggregator_status, qos=1)
            await c.subscribe(topics.model_global, qos=1)
            async for message in c.messages:
                if message.topic.matches(topics.model_global):
                    model = GlobalModel.decode(bytes(message.payload))
                    if models is not None:
                        models.append(model)
                    continue
                status = AggregatorStatus.decode(bytes(message.payload))
                if model is not None and (status.last_accuracy or 0.0) >= goal:
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


@pytest.mark.broker
@pytest.mark.parametrize(
    "start",
    [
        # Every device's statistics before the first model: none of them waits for the
        # schema to read its text labels first.
        ["--stats-quorum", "3", "--stats-wait", "600"],
        # The first model goes out at once, unstandardized; the first statistics set its
        # standardization instead of re-expressing random weights for raw units.
        ["--stats-wait", "0"],
    ],
    ids=["quorum", "no-wait"],
)
async def test_a_small_sensor_fleet_with_text_labels_learns_to_the_centralized_figure(
    mosquitto, fleet, tmp_path, start
):
    devices = 3
    files = write_fleet_csvs(
        tmp_path / "data", sensor_readings(900), devices=devices, alpha=0.5, shuffle_columns=True
    )
    central = centralized_logreg(files.devices, files.test, files.schema)
    files.schema.save(tmp_path / "schema.json")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    logs = [(tmp_path / f"p{i}.log").open("wb") for i in range(devices + 1)]
    common = ["--broker", mosquitto.url, "--fleet", fleet]
    agg = [*FEDMQ, "aggregator", *common, "--schema", "schema.json", "--model", "mlp:16"]
    agg += ["--eval", str(files.test), "--out-dir", "agg", *start]
    procs = [subprocess.Popen(agg, stderr=logs[0], cwd=tmp_path, env=env)]
    models: list[GlobalModel] = []
    try:
        if start[-1] == "0":  # the agents come after the first model
            await asyncio.wait_for(_until(mosquitto.url, fleet, 60, -1.0, models), 60)
        for i, path in enumerate(files.devices):
            cmd = [*FEDMQ, "agent", *common, "--device", f"dev{i}", "--data", str(path)]
            cmd += ["--label", files.schema.label, "--state-dir", f"state{i}"]
            procs.append(subprocess.Popen(cmd, stderr=logs[i + 1], cwd=tmp_path, env=env))
        status, model = await _until(mosquitto.url, fleet, 150, central - 0.03, models)
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
    assert status.last_accuracy >= central - 0.03
    identity = Standardizer.identity(files.schema.n_features)
    first = models[0]
    assert first.prep is not None
    if start[-1] == "0":
        assert first.prep.same_as(identity) and "publishing anyway" in errors[0]
        assert "set the first standardization" in errors[0]
    else:
        assert not first.prep.same_as(identity) and "publishing anyway" not in errors[0]
    # The weights stay on the scale of standardized inputs (re-expressed for raw units
    # they would hold the largest sensor's scale, ~1e4).
    assert max(float(np.abs(w).max()) for w in model.weights.values()) < 100
