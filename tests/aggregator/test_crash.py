"""kill -9 of the aggregator under load, three times: nothing lost, nothing applied twice."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from fedmq.config import BrokerConfig
from fedmq.model import Arch, init_weights
from fedmq.topics import Topics
from fedmq.wire import AggregatorStatus, GlobalModel, Update

pytestmark = pytest.mark.broker
ARCH = Arch("mlp", (4, 8, 3))
DEVICES = 20
KILLS = 3


def _spawn(url: str, fleet: str, out: Path, log) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from tools.entry import main; main()", "aggregator"]
    cmd += ["--broker", url, "--fleet", fleet, "--model", "mlp:4,8,3", "--strategy", "fedasync"]
    cmd += ["--max-staleness", "1000", "--out-dir", str(out), "--no-standardize"]
    return subprocess.Popen(cmd, stderr=log)


class Fleet:
    """Twenty devices publishing QoS 1 updates against the newest version they have seen."""

    def __init__(self, url: str, fleet: str) -> None:
        self.kwargs = BrokerConfig.from_url(url).client_kwargs()
        self.topics = Topics(fleet)
        self.version = 0
        self.versions_seen: list[int] = []
        self.sent: list[tuple[str, int]] = []
        self.serving: asyncio.Queue[AggregatorStatus] = asyncio.Queue()
        self.stop = asyncio.Event()
        self.delta = {k: np.full_like(v, 1e-3) for k, v in init_weights(ARCH, 0).items()}

    async def observe(self, ready: asyncio.Event) -> None:
        async with aiomqtt.Client(**self.kwargs) as c:
            await c.subscribe(self.topics.model_global, qos=1)
            await c.subscribe(self.topics.aggregator_status, qos=1)
            ready.set()
            async for m in c.messages:
                if m.topic.matches(self.topics.model_global):
                    self.version = GlobalModel.decode(bytes(m.payload)).version
                    self.versions_seen.append(self.version)
                else:
                    status = AggregatorStatus.decode(bytes(m.payload))
                    if status.state == "serving":
                        self.serving.put_nowait(status)

    async def device(self, name: str, rng: random.Random) -> None:
        async with aiomqtt.Client(**self.kwargs, identifier=f"load-{name}") as c:
            seq = 0
            while not self.stop.is_set():
                update = Update.from_delta(
                    self.delta, device=name, seq=seq, base_version=self.version,
                    num_samples=10, steps=1, loss=0.5,
                )  # fmt: skip
                await c.publish(self.topics.update(name), update.encode(), qos=1)
                self.sent.append((name, seq))  # the broker acknowledged it
                seq += 1
                await asyncio.sleep(rng.uniform(0.02, 0.2))  # the device's pace


async def _serving_after(fleet: Fleet, launched_wall: float) -> float:
    while True:
        status = await asyncio.wait_for(fleet.serving.get(), 10)
        if status.started_at >= launched_wall:
            return status.at


def _ledger_rows(path: Path) -> list[tuple]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT kind, device, seq, reason, version FROM events").fetchall()
    finally:
        db.close()


async def test_kill_9_three_times_loses_nothing_and_doubles_nothing(mosquitto, fleet, tmp_path):
    rng = random.Random(20261127)
    fl = Fleet(mosquitto.url, fleet)
    log = (tmp_path / "aggregator.log").open("ab")
    ready = asyncio.Event()
    observer = asyncio.create_task(fl.observe(ready))
    await asyncio.wait_for(ready.wait(), 10)
    launched = time.time()
    agg = _spawn(mosquitto.url, fleet, tmp_path, log)
    recoveries = []
    try:
        await _serving_after(fl, launched)
        devices = [
            asyncio.create_task(fl.device(f"dev{i:02d}", random.Random(i))) for i in range(DEVICES)
        ]
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(0.5, 2.0))  # a random moment under load
            agg.send_signal(signal.SIGKILL)
            agg.wait()
            launched_mono, launched = time.monotonic(), time.time()
            agg = _spawn(mosquitto.url, fleet, tmp_path, log)
            await _serving_after(fl, launched)
            recoveries.append(time.monotonic() - launched_mono)
        await asyncio.sleep(1.0)  # keep the load on the last incarnation for a moment
        fl.stop.set()
        await asyncio.gather(*devices)
        sent = set(fl.sent)
        # Every update the broker acknowledged must reach a decision in the ledger.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            decided = {(d, s) for _, d, s, _, _ in _ledger_rows(tmp_path / "ledger.sqlite")}
            if sent <= decided:
                break
            await asyncio.sleep(0.1)  # another process's commits: nothing to await on
        agg.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(agg.wait, 15) == 0
    finally:
        agg.kill()
        agg.wait()
        log.close()
        observer.cancel()
    rows = _ledger_rows(tmp_path / "ledger.sqlite")
    decided = Counter((d, s) for _, d, s, _, _ in rows if s is not None)
    applied = [r for r in rows if r[0] == "applied"]
    rejected = Counter(r[3] for r in rows if r[0] == "rejected")
    missing = sent - set(decided)
    doubled = [k for k, n in decided.items() if n > 1]
    final_version = max(r[4] for r in rows)
    summary = {
        "sent": len(sent),
        "applied": len(applied),
        "rejected": dict(rejected),
        "missing": len(missing),
        "doubled": len(doubled),
        "final_version": final_version,
        "recovery_s": [round(r, 3) for r in recoveries],
    }
    print(json.dumps(summary))
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert not missing and not doubled, summary
    assert set(decided) <= sent, "the ledger holds updates nobody sent"
    # FedAsync makes one version per applied update: an update applied twice in memory
    # would push the version past the number of applied records.
    assert final_version == len(applied), summary
    assert all(reason for reason in rejected), summary
    assert fl.versions_seen == sorted(fl.versions_seen), "the version went backwards"
    assert len(recoveries) == KILLS and max(recoveries) <= 2.0, summary
    assert len(sent) >= 200, summary
