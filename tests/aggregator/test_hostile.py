"""Hostile input: the aggregator counts it, survives it, and its model does not move."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest

from aggregator.config import AggregatorConfig
from aggregator.service import Aggregator
from aggregator.strategies import make_strategy
from benchmarks.fuzz import run
from fedmq.config import BrokerConfig
from fedmq.model import Arch, init_weights
from fedmq.topics import Topics
from fedmq.training import Hyper
from fedmq.wire import AggregatorStatus, weights_digest


def _check(result: dict) -> None:
    assert result["model_unchanged"], result
    assert result["accepted"] == 0 and result["new_versions"] == 0, result
    assert sum(result["rejected_by_reason"].values()) == result["cases"], result
    # Every family of hostile input was met and named.
    for reason in ("malformed", "too_large", "bad_tensor", "bad_dtype", "bad_shape",
                   "non_finite", "identity_mismatch", "old_seq", "too_stale",
                   "future_version", "bad_topic", "unknown_field", "duplicate_key",
                   "bad_device_id", "bad_version"):  # fmt: skip
        assert result["rejected_by_reason"].get(reason, 0) > 0, reason


def test_hostile_input_is_counted_and_changes_nothing(tmp_path):
    _check(run(3_000, seed=1, out_dir=tmp_path))


@pytest.mark.slow
def test_a_hundred_thousand_hostile_cases(tmp_path):
    _check(run(100_000, seed=2, out_dir=tmp_path))


@pytest.mark.broker
async def test_mosquitto_pub_garbage_into_the_running_aggregator(mosquitto, fleet, tmp_path):
    pub = shutil.which("mosquitto_pub")
    assert pub, "mosquitto_pub is missing: apt-get install mosquitto-clients"
    arch = Arch("mlp", (4, 8, 3))
    topics = Topics(fleet)
    agg = Aggregator(
        AggregatorConfig(
            broker=BrokerConfig.from_url(mosquitto.url),
            fleet=fleet,
            out_dir=tmp_path,
            status_interval=0.2,
            standardize=False,  # hostile clients send no feature statistics
        ),
        make_strategy("fedbuff", init_weights(arch, 0), 0),
        arch,
        Hyper(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(agg.run(stop))
    await asyncio.wait_for(agg.wait_for_version(0), 15)
    before = weights_digest(arch, agg.strategy.weights)
    base = ["-h", "127.0.0.1", "-p", str(mosquitto.port), "-q", "1"]
    sends = [
        ["-t", topics.update("pi"), "-m", "hello"],
        ["-t", topics.update("pi"), "-n"],
        ["-t", topics.update("pi"), "-f", "/bin/true"],
        ["-t", topics.update("pi"), "-m", "\x93\x01\x02\x03"],
    ]
    for args in sends:
        await asyncio.to_thread(subprocess.run, [pub, *base, *args], check=True, timeout=10)
    while sum(agg.counters.rejected.values()) < len(sends):
        await asyncio.sleep(0.05)  # the daemon's own counters; mosquitto_pub has no receipt
    stop.set()
    await task
    after = weights_digest(arch, agg.strategy.weights)
    assert (agg.strategy.version, after) == (0, before)
    assert agg.counters.rejected["malformed"] >= 2
    assert agg.counters.accepted == 0
    assert AggregatorStatus.decode(agg._status("serving").encode()).rejected == dict(
        agg.counters.rejected
    )
