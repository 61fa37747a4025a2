"""What ``fedmq aggregator`` writes to stderr (the journal), run as a process as systemd runs
it: the progress line, rejections by device and reason, ``--log-level``."""

from __future__ import annotations

import asyncio
import queue
import signal
import subprocess
import threading
from collections.abc import Callable
from datetime import datetime

import aiomqtt
import pytest

from fedmq.config import BrokerConfig
from fedmq.topics import Topics
from fedmq.wire import AggregatorStatus
from tests.conftest import FEDMQ


class Lines:
    """A process's stderr, line by line, read on a thread so a wait has a deadline."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        self.seen: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def wait_for(self, ok: Callable[[str], bool], timeout: float) -> str:
        while True:
            try:
                line = self._q.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no such line within {timeout}s: {self.seen[-20:]}") from None
            if line is None:
                raise AssertionError(f"the process ended: {self.seen[-20:]}")
            self.seen.append(line)
            if ok(line):
                return line

    def rest(self, timeout: float = 30) -> list[str]:
        """Every line until the process ends."""
        self.proc.wait(timeout)
        while (line := self._q.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return self.seen

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@pytest.fixture
def run_aggregator(mosquitto, fleet, tmp_path):
    made: list[Lines] = []

    def start(*args: str, model: str = "mlp:4,8,3") -> Lines:
        argv = ["aggregator", "--broker", mosquitto.url, "--fleet", fleet, "--model", model]
        made.append(Lines([*FEDMQ, *argv, "--out-dir", str(tmp_path / "agg"), *args]))
        return made[-1]

    yield start
    for lines in made:
        lines.close()


@pytest.mark.broker
async def test_rejections_name_device_and_reason_and_are_rate_limited(
    run_aggregator, mosquitto, fleet
):
    agg = run_aggregator("--log-level", "warning", "--status-interval", "0.3")
    t = Topics(fleet)
    # The aggregator is serving once its retained status says so.
    async with aiomqtt.Client(**BrokerConfig.from_url(mosquitto.url).client_kwargs()) as c:
        await c.subscribe(t.aggregator_status, qos=1)
        async for message in c.messages:
            if b"serving" in bytes(message.payload):
                break
        for i in range(200):
            await c.publish(t.update("mallory"), b"\xc1 not msgpack %d" % i, qos=1)
        async for message in c.messages:  # until the aggregator has counted all 200
            if AggregatorStatus.decode(bytes(message.payload)).rejected.get("malformed") == 200:
                break
    first = await asyncio.to_thread(agg.wait_for, lambda line: "rejected update" in line, 30)
    assert "from mallory [malformed]" in first and " WARNING " in first
    agg.proc.send_signal(signal.SIGTERM)
    lines = await asyncio.to_thread(agg.rest)
    rejected = [line for line in lines if "rejected" in line]
    assert len(rejected) == 4, lines  # three one by one, then one summary
    assert "rejected 197 more update(s) [malformed]" in rejected[-1]
    assert "mallory (197)" in rejected[-1]
    # --log-level warning: no INFO line (such as "serving fleet ...") was written.
    assert not [line for line in lines if " INFO " in line], lines


@pytest.mark.broker
async def test_the_progress_line_comes_at_most_once_per_interval(
    run_aggregator, daemons, mosquitto, fleet, digits_files, tmp_path
):
    shards, evalset = digits_files(2)
    agg = run_aggregator(
        "--progress-interval", "1", "--log-level", "info", "--eval", str(evalset),
        model="mlp:64,32,10",
    )  # fmt: skip
    for i, shard in enumerate(shards):
        daemons.start(
            f"dev{i}", "agent", "--broker", mosquitto.url, "--fleet", fleet,
            "--device", f"dev{i}", "--data", str(shard), "--state-dir", str(tmp_path / f"s{i}"),
        )  # fmt: skip
    try:
        line = await asyncio.to_thread(
            agg.wait_for, lambda x: "progress:" in x and "2 device(s) online" in x, 60
        )
        assert " INFO fedmq.aggregator progress: version " in line
        assert "updates/s" in line and "accuracy" in line
        later = await asyncio.to_thread(agg.wait_for, lambda x: "progress:" in x, 30)
    except BaseException:
        print(daemons.logs())
        raise
    # asctime leads each line, to the millisecond: the two lines are >= 1 s apart.
    apart = _when(later) - _when(line)
    assert apart.total_seconds() >= 1.0, (line, later)


def _when(line: str) -> datetime:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
