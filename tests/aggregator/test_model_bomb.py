"""One device sends a finite update of 1e30 into a real fleet on Mosquitto (issue 10, 1).

Three ``fedmq agent`` processes train on digits with a ``fedmq aggregator`` process; an
attacker publishes one update as a fourth device with ``mosquitto_pub``. With the norm
bound on, the defences refuse it (``norm_bound``); with it off, the gate refuses the
model it would make (``model_rejected``). Either way the accuracy holds, every agent
stays alive and keeps training, and no NaN reaches the status or history.jsonl.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from aggregator.main import parse_arch
from fedmq.config import BrokerConfig
from fedmq.model import init_weights
from fedmq.topics import Topics, parse
from fedmq.wire import AggregatorStatus, DeviceLedger, DeviceStatus, Update

MODEL = "mlp:64,32,10"
DEVICES = ("dev0", "dev1", "dev2")
GOAL = 0.85  # the accuracy the fleet reaches before the attack


class Watch:
    """The fleet's retained state as it changes: aggregator status, ledgers, device statuses.

    Every payload is decoded with the wire codec, so a NaN in a status fails the test.
    """

    def __init__(self, url: str, topics: Topics) -> None:
        self.url, self.topics = url, topics
        self.status: AggregatorStatus | None = None
        self.ledgers: dict[str, DeviceLedger] = {}
        self.devices: dict[str, DeviceStatus] = {}
        self.failed: Exception | None = None
        self.changed = asyncio.Condition()

    async def run(self, ready: asyncio.Event) -> None:
        try:
            await self._follow(ready)
        except Exception as exc:  # e.g. a status the codec refuses: ``until`` raises it
            self.failed = exc
            async with self.changed:
                self.changed.notify_all()

    async def _follow(self, ready: asyncio.Event) -> None:
        async with aiomqtt.Client(**BrokerConfig.from_url(self.url).client_kwargs()) as c:
            for topic in (
                self.topics.aggregator_status,
                self.topics.aggregator_devices_filter,
                self.topics.device_status_filter,
            ):
                await c.subscribe(topic, qos=1)
            ready.set()
            async for message in c.messages:
                payload = bytes(message.payload)
                if not payload:
                    continue
                topic = str(message.topic)
                if topic == self.topics.aggregator_status:
                    self.status = AggregatorStatus.decode(payload)
                elif parse(topic).kind == "device_status":
                    status = DeviceStatus.decode(payload)
                    self.devices[status.device] = status
                else:
                    ledger = DeviceLedger.decode(payload)
                    self.ledgers[ledger.device] = ledger
                async with self.changed:
                    self.changed.notify_all()

    async def until(self, what: Callable[[], bool], timeout: float) -> None:
        async with self.changed:
            await asyncio.wait_for(
                self.changed.wait_for(lambda: self.failed is not None or what()), timeout
            )
        if self.failed is not None:
            raise self.failed

    def accepted(self, device: str) -> int:
        ledger = self.ledgers.get(device)
        return 0 if ledger is None else ledger.accepted


def _bomb(path: Path, base_version: int) -> Path:
    """A legal, finite update whose every value is 1e30 (float32 holds up to 3.4e38)."""
    delta = {k: np.full_like(v, 1e30) for k, v in init_weights(parse_arch(MODEL), 0).items()}
    update = Update.from_delta(
        delta, device="mallory", seq=0, base_version=base_version, num_samples=100,
        steps=1, loss=0.5, sent_at=time.time(),
    )  # fmt: skip
    path.write_bytes(update.encode())
    return path


@pytest.mark.broker
@pytest.mark.parametrize(
    ("norm_mode", "refused_as"), [("reject", "norm_bound"), ("off", "model_rejected")]
)
async def test_one_1e30_update_changes_nothing_and_every_agent_trains_on(
    mosquitto, fleet, daemons, digits_files, tmp_path, norm_mode, refused_as
):
    pub = shutil.which("mosquitto_pub")
    assert pub, "mosquitto_pub is missing: apt-get install mosquitto-clients"
    shards, evalset = digits_files(len(DEVICES))
    topics = Topics(fleet)
    common = ["--broker", mosquitto.url, "--fleet", fleet]
    watch = Watch(mosquitto.url, topics)
    ready = asyncio.Event()
    watcher = asyncio.create_task(watch.run(ready))
    await asyncio.wait_for(ready.wait(), 10)
    daemons.start(
        "agg", "aggregator", *common, "--model", MODEL, "--strategy", "fedasync",
        "--eval", str(evalset), "--out-dir", str(tmp_path / "agg"), "--no-export-onnx",
        "--status-interval", "0.5", "--norm-mode", norm_mode,
    )  # fmt: skip
    for device, shard in zip(DEVICES, shards, strict=True):
        daemons.start(
            device, "agent", *common, "--device", device, "--data", str(shard),
            "--state-dir", str(tmp_path / device),
        )  # fmt: skip
    try:

        def accuracy() -> float:
            return (watch.status and watch.status.last_accuracy) or 0.0

        await watch.until(lambda: accuracy() >= GOAL and len(watch.ledgers) == 3, 150)
        assert watch.status is not None
        before, bomb_version = accuracy(), watch.status.version
        trained = {d: watch.accepted(d) for d in DEVICES}
        bomb = _bomb(tmp_path / "bomb.bin", bomb_version)
        send = [pub, "-h", "127.0.0.1", "-p", str(mosquitto.port), "-q", "1"]
        send += ["-i", "mallory", "-t", topics.update("mallory"), "-f", str(bomb)]
        await asyncio.to_thread(subprocess.run, send, check=True, timeout=10)
        await watch.until(lambda: watch.status.rejected.get(refused_as, 0) >= 1, 30)
        # Training goes on: new versions, and every device's updates still accepted.
        await watch.until(
            lambda: (
                watch.status.version >= bomb_version + 10
                and all(watch.accepted(d) > trained[d] for d in DEVICES)
            ),
            90,
        )
        after = accuracy()
        status = watch.status
        print(
            f"\nnorm_mode={norm_mode}: accuracy before {before:.4f} (v{bomb_version}),"
            f" after {after:.4f} (v{status.version}); rejected {status.rejected}"
        )
    except BaseException:
        print(daemons.logs())
        raise
    finally:
        watcher.cancel()
    assert after >= before - 0.02
    other = {"norm_bound", "model_rejected"} - {refused_as}
    assert status.rejected.get(refused_as) == 1 and not status.rejected.get(other.pop())
    assert status.last_loss is not None
    for device in DEVICES:
        assert daemons.procs[device].poll() is None, daemons.log(device)
        assert watch.devices[device].state != "error", watch.devices[device]
    assert daemons.procs["agg"].poll() is None
    assert "Traceback" not in daemons.logs()
    history = (tmp_path / "agg" / "history.jsonl").read_text()
    assert "NaN" not in history and "Infinity" not in history
    assert all(json.loads(line)["loss"] is not None for line in history.splitlines())
