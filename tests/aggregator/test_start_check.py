"""The start check end to end: a restored ledger backup under running agents, on Mosquitto.

Real ``fedmq aggregator`` and ``fedmq agent`` processes: the aggregator refuses a
ledger behind the fleet (exit 2, one line), then continues from it with
``--accept-rollback``, and the agents follow the announced rollback and train again.
A 0-byte ledger is refused the same way.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import Callable

import aiomqtt
import pytest

from fedmq.config import BrokerConfig
from fedmq.topics import Topics
from fedmq.wire import AggregatorStatus, DeviceStatus, GlobalModel

pytestmark = pytest.mark.broker


class Watch:
    """Every global model and device status the fleet's topics carry, as they come."""

    def __init__(self, url: str, fleet: str) -> None:
        self.kwargs, self.topics = BrokerConfig.from_url(url).client_kwargs(), Topics(fleet)
        self.models: list[GlobalModel] = []
        self.held: list[tuple[str, int]] = []  # (device, model_version) from statuses
        self.changed = asyncio.Event()

    async def run(self, ready: asyncio.Event) -> None:
        async with aiomqtt.Client(**self.kwargs) as c:
            await c.subscribe(self.topics.model_global, qos=1)
            await c.subscribe(self.topics.device_status_filter, qos=1)
            ready.set()
            async for m in c.messages:
                if m.topic.matches(self.topics.model_global):
                    self.models.append(GlobalModel.decode(bytes(m.payload)))
                else:
                    s = DeviceStatus.decode(bytes(m.payload))
                    self.held.append((s.device, s.model_version))
                self.changed.set()

    async def model(self, ok: Callable[[GlobalModel], bool], timeout: float = 60) -> GlobalModel:
        async def wait() -> GlobalModel:
            while True:
                found = [m for m in self.models if ok(m)]
                if found:
                    return found[0]
                self.changed.clear()
                await self.changed.wait()

        return await asyncio.wait_for(wait(), timeout)


async def _status(url: str, fleet: str) -> AggregatorStatus:
    async with aiomqtt.Client(**BrokerConfig.from_url(url).client_kwargs()) as c:
        await c.subscribe(Topics(fleet).aggregator_status, qos=1)
        async for m in c.messages:
            return AggregatorStatus.decode(bytes(m.payload))
    raise AssertionError("no status")


async def _stop(proc) -> int:
    proc.send_signal(signal.SIGTERM)
    return await asyncio.to_thread(proc.wait, 30)


async def test_a_restored_backup_is_refused_then_accepted_and_agents_follow(
    mosquitto, fleet, tmp_path, daemons, digits_files
):
    shards, _ = digits_files(3)
    common = ["--broker", mosquitto.url, "--fleet", fleet]
    out = tmp_path / "agg"
    ledger = out / "ledger.sqlite"
    agg_args = [*common, "--model", "mlp:64,32,10", "--strategy", "fedasync", "--out-dir", str(out)]
    agg_args += ["--no-export-onnx"]
    watch = Watch(mosquitto.url, fleet)
    ready = asyncio.Event()
    watcher = asyncio.create_task(watch.run(ready))
    await ready.wait()
    try:
        daemons.start("agg1", "aggregator", *agg_args)
        for i, shard in enumerate(shards):
            daemons.start(
                f"dev{i}", "agent", *common, "--device", f"dev{i}", "--data", str(shard),
                "--state-dir", str(tmp_path / f"state{i}"),
            )  # fmt: skip
        first = await watch.model(lambda m: m.version >= 5)
        assert await _stop(daemons.procs["agg1"]) == 0, daemons.logs()
        shutil.copy(ledger, tmp_path / "backup.sqlite")  # closed cleanly: no -wal
        backup = max(m.version for m in watch.models if m.run == first.run)

        daemons.start("agg2", "aggregator", *agg_args)
        ahead = await watch.model(lambda m: m.version >= backup + 15)
        assert ahead.run == first.run and ahead.rollbacks == 0  # a restart is the same run
        assert await _stop(daemons.procs["agg2"]) == 0, daemons.logs()
        top = max(m.version for m in watch.models)

        for suffix in ("-wal", "-shm"):
            ledger.with_name(ledger.name + suffix).unlink(missing_ok=True)
        shutil.copy(tmp_path / "backup.sqlite", ledger)
        refused = daemons.run("aggregator", *agg_args, timeout=60)
        assert refused.returncode == 2, refused.stderr
        lines = [x for x in refused.stderr.splitlines() if x.startswith("fedmq: error:")]
        assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert f"holds v{backup}, the broker retains model v{top}" in lines[0]
        assert "--accept-rollback" in lines[0] and "[ledger_behind]" in lines[0]
        status = await _status(mosquitto.url, fleet)
        assert (status.state, status.reason) == ("offline", "ledger_behind")
        print("REFUSED:", lines[0])

        seen = len(watch.held)
        daemons.start("agg3", "aggregator", *agg_args, "--accept-rollback")
        rolled = await watch.model(lambda m: m.rollbacks == 1)
        assert rolled.run == first.run and rolled.version == backup < top
        again = await watch.model(lambda m: m.rollbacks == 1 and m.version >= backup + 5)
        held_after = [v for _, v in watch.held[seen:]]
        # The agents dropped v{top} for the rolled-back line and trained on it.
        assert any(backup <= v < top for v in held_after), held_after
        assert again.version > rolled.version
        assert "rollback 1 of run" in daemons.log("agg3")
        assert await _stop(daemons.procs["agg3"]) == 0, daemons.logs()

        ledger.write_bytes(b"")
        for suffix in ("-wal", "-shm"):
            ledger.with_name(ledger.name + suffix).unlink(missing_ok=True)
        empty = daemons.run("aggregator", *agg_args, timeout=60)
        assert empty.returncode == 2, empty.stderr
        assert "is empty (0 bytes) but the broker retains model" in empty.stderr
        assert "[ledger_empty]" in empty.stderr and "Traceback" not in empty.stderr
        print("EMPTY:", empty.stderr.strip().splitlines()[-1])
        after = max(m.version for m in watch.models)
        assert after >= again.version  # nothing at v0 overwrote the retained model
    finally:
        watcher.cancel()
