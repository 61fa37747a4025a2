"""How the aggregator ends on a failure: one line, its exit status, and ``offline`` retained.

An exception exit sends a clean DISCONNECT, which suppresses the last will; the
aggregator must publish its offline status itself. A full disk (a tiny tmpfs, so root
only) is exit status 3 with reason ``disk_full``, which the systemd unit does not
restart in a loop.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from fedmq.config import BrokerConfig
from fedmq.model import Arch, init_weights
from fedmq.topics import Topics
from fedmq.wire import AggregatorStatus, Update

pytestmark = pytest.mark.broker
ARCH = Arch("mlp", (4, 8, 3))


async def _status(kwargs: dict, topics: Topics, state: str) -> AggregatorStatus:
    async with aiomqtt.Client(**kwargs) as c:
        await c.subscribe(topics.aggregator_status, qos=1)
        async for m in c.messages:
            status = AggregatorStatus.decode(bytes(m.payload))
            if status.state == state:
                return status
    raise AssertionError("no status")


async def _feed_until_exit(kwargs: dict, topics: Topics, proc: subprocess.Popen) -> int:
    """Send updates from one device until the aggregator process ends."""
    delta = {k: np.full_like(v, 1e-3) for k, v in init_weights(ARCH, 0).items()}
    async with aiomqtt.Client(**kwargs) as c:
        for seq in range(100_000):
            if proc.poll() is not None:
                return proc.returncode
            update = Update.from_delta(
                delta, device="d1", seq=seq, base_version=0, num_samples=10, steps=1, loss=0.5
            )
            await c.publish(topics.update("d1"), update.encode(), qos=1)
            await asyncio.sleep(0.01)
    raise AssertionError("the aggregator never stopped")


def _start(daemons, url: str, fleet: str, out: Path) -> subprocess.Popen:
    return daemons.start(
        "agg", "aggregator", "--broker", url, "--fleet", fleet, "--model", "mlp:4,8,3",
        "--strategy", "fedasync", "--out-dir", str(out), "--no-export-onnx",
        "--checkpoint-every", "5",
    )  # fmt: skip


@pytest.fixture
def tiny_disk(tmp_path: Path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a tmpfs of a fixed size needs root")
    where = tmp_path / "disk"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield where
    subprocess.run(["umount", "-l", str(where)])


def _fill(disk: Path) -> None:
    try:
        with (disk / "filler").open("wb", buffering=0) as fh:
            while True:
                fh.write(b"\0" * 4096)
    except OSError:
        pass


async def test_a_full_disk_is_exit_3_one_line_and_offline_disk_full(
    mosquitto, fleet, daemons, tiny_disk
):
    kwargs, topics = BrokerConfig.from_url(mosquitto.url).client_kwargs(), Topics(fleet)
    proc = _start(daemons, mosquitto.url, fleet, tiny_disk / "agg")
    await asyncio.wait_for(_status(kwargs, topics, "serving"), 60)
    _fill(tiny_disk)
    code = await asyncio.wait_for(_feed_until_exit(kwargs, topics, proc), 120)
    err = daemons.log("agg")
    assert code == 3, err
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.startswith("fedmq: error:")]
    assert len(lines) == 1 and lines[0].endswith("[disk_full]"), err
    status = await asyncio.wait_for(_status(kwargs, topics, "offline"), 10)
    assert status.reason == "disk_full" and status.run is not None
    print("DISK FULL:", lines[0], "| status:", status.state, status.reason, status.message)


async def test_an_exception_exit_still_publishes_offline(mosquitto, fleet, daemons, tmp_path):
    kwargs, topics = BrokerConfig.from_url(mosquitto.url).client_kwargs(), Topics(fleet)
    out = tmp_path / "agg"
    proc = _start(daemons, mosquitto.url, fleet, out)
    await asyncio.wait_for(_status(kwargs, topics, "serving"), 60)
    # The next version's history line cannot be written: a bug-like failure, not storage.
    (out / "history.jsonl").unlink()
    (out / "history.jsonl").mkdir()
    code = await asyncio.wait_for(_feed_until_exit(kwargs, topics, proc), 60)
    assert code != 0
    status = await asyncio.wait_for(_status(kwargs, topics, "offline"), 10)
    assert status.reason == "crashed" and "IsADirectoryError" in (status.message or ""), status
    print("CRASH status:", status.state, status.reason, status.message)


async def test_the_status_counts_the_devices_in_each_state_error_included(
    mosquitto, fleet, tmp_path, daemons
):
    from tests.tools.ops.test_retained import status

    topics = Topics(fleet)
    kwargs = BrokerConfig.from_url(mosquitto.url).client_kwargs()
    async with aiomqtt.Client(**kwargs) as c:
        for device, state in (("a", "error"), ("b", "idle"), ("c", "error"), ("d", "offline")):
            reason = "unknown_class" if state == "error" else None
            payload = status(device, state, reason=reason).encode()
            await c.publish(topics.device_status(device), payload, qos=1, retain=True)
    daemons.start(
        "agg", "aggregator", "--broker", mosquitto.url, "--fleet", fleet, "--model", "mlp:4,8,3",
        "--out-dir", str(tmp_path / "agg"), "--status-interval", "0.2", "--no-export-onnx",
    )  # fmt: skip

    async def counted() -> AggregatorStatus:
        async with aiomqtt.Client(**kwargs) as c:
            await c.subscribe(topics.aggregator_status, qos=1)
            async for m in c.messages:
                s = AggregatorStatus.decode(bytes(m.payload))
                if s.state == "serving" and s.devices and s.devices["error"] == 2:
                    return s
        raise AssertionError("the connection closed")

    got = await asyncio.wait_for(counted(), 60)
    assert got.devices == {"online": 0, "training": 0, "idle": 1, "offline": 1, "error": 2}
