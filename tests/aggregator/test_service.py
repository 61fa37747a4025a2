"""The aggregator daemon with real agents through a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiomqtt
import numpy as np
import onnx
import pytest

from aggregator.config import AggregatorConfig
from aggregator.service import Aggregator
from aggregator.strategies import make_strategy
from fedmq.config import BrokerConfig
from fedmq.model import Arch, init_weights
from fedmq.topics import Topics
from fedmq.training import Hyper
from fedmq.wire import AggregatorStatus, DeviceLedger, GlobalModel, Update, weights_digest
from tools.sim.demo import DemoConfig, run_demo

pytestmark = pytest.mark.broker
ARCH = Arch("mlp", (4, 8, 3))


@pytest.mark.parametrize("strategy", ["fedasync", "fedbuff"])
async def test_ten_agents_learn_digits_together(mosquitto, fleet, tmp_path, strategy):
    cfg = DemoConfig(
        devices=10,
        strategy=strategy,
        broker=mosquitto.url,
        fleet=fleet,
        target=0.92,
        budget=120,
        out_dir=tmp_path,
    )
    summary = await run_demo(cfg)
    assert summary["time_to_target_s"] is not None, summary
    assert summary["test_accuracy"] >= 0.90, summary
    assert summary["updates_rejected"] == 0, summary
    history = _history(tmp_path / "aggregator/history.jsonl")
    versions = [h["version"] for h in history]
    assert versions == sorted(set(versions))  # one line per published version, increasing
    assert max(h["accuracy"] for h in history) >= 0.92
    assert Path(summary["onnx_path"]).is_file()


def _history(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _aggregator(url: str, fleet: str, out: Path, strategy: str = "fedasync", **cfg) -> Aggregator:
    params = {"k": 5} if strategy == "fedbuff" else {}
    strategy = make_strategy(strategy, init_weights(ARCH, 0), 0, **params)
    return Aggregator(
        AggregatorConfig(broker=BrokerConfig.from_url(url), fleet=fleet, out_dir=out, **cfg),
        strategy,
        ARCH,
        Hyper(),
    )


async def _first(client: aiomqtt.Client, timeout: float = 10.0) -> aiomqtt.Message:
    async def first() -> aiomqtt.Message:
        async for message in client.messages:
            return message
        raise AssertionError("the connection closed")

    return await asyncio.wait_for(first(), timeout)


async def test_a_late_device_gets_the_retained_model_within_a_second(mosquitto, fleet, tmp_path):
    agg = _aggregator(mosquitto.url, fleet, tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(agg.run(stop))
    await asyncio.wait_for(agg.wait_for_version(0), 15)
    kwargs = BrokerConfig.from_url(mosquitto.url).client_kwargs()
    started = time.monotonic()
    async with aiomqtt.Client(**kwargs) as late:
        await late.subscribe(Topics(fleet).model_global, qos=1)
        message = await _first(late)
    took = time.monotonic() - started
    # The ONNX export is retained beside it and is a valid model.
    async with aiomqtt.Client(**kwargs) as late:
        await late.subscribe(Topics(fleet).model_onnx, qos=1)
        exported = onnx.load_from_string(bytes((await _first(late)).payload))
    stop.set()
    await task
    assert message.retain
    model = GlobalModel.decode(bytes(message.payload))
    assert model.version == 0 and model.arch == ARCH
    assert took < 1.0, f"late join took {took:.3f}s"
    meta = {p.key: p.value for p in exported.metadata_props}
    assert meta["model_version"] == "0" and meta["digest"] == model.digest


async def test_bad_updates_are_counted_by_reason_and_change_nothing(mosquitto, fleet, tmp_path):
    topics = Topics(fleet)
    agg = _aggregator(mosquitto.url, fleet, tmp_path, status_interval=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(agg.run(stop))
    await asyncio.wait_for(agg.wait_for_version(0), 15)
    before = weights_digest(ARCH, agg.strategy.weights)
    good = init_weights(ARCH, 5)
    fields = dict(base_version=0, num_samples=10, steps=1, loss=0.1)
    sends = {
        "malformed": (topics.update("a"), b"\xc1\x00garbage"),
        "identity_mismatch": (
            topics.update("a"),
            Update.from_delta(good, device="b", seq=0, **fields).encode(),
        ),
        "bad_shape": (
            topics.update("a"),
            Update.from_delta(
                {"w0": np.zeros((4, 8), np.float32)}, device="a", seq=1, **fields
            ).encode(),
        ),
        "future_version": (
            topics.update("a"),
            Update.from_delta(good, device="a", seq=2, **{**fields, "base_version": 9}).encode(),
        ),
    }
    kwargs = BrokerConfig.from_url(mosquitto.url).client_kwargs()
    async with aiomqtt.Client(**kwargs) as device:
        await device.subscribe(topics.aggregator_status, qos=1)
        for topic, payload in sends.values():
            await device.publish(topic, payload, qos=1)
        # The status is retained and republished every 0.2 s; wait until it counts all four.
        while True:
            status = AggregatorStatus.decode(bytes((await _first(device)).payload))
            if sum(status.rejected.values()) >= len(sends):
                break
    stop.set()
    await task
    assert status.rejected == dict.fromkeys(sends, 1)
    assert status.accepted == 0 and agg.strategy.version == 0
    after = weights_digest(ARCH, agg.strategy.weights)
    assert after == before
    assert agg.counters.ledger("a").rejected == {
        "malformed": 1,
        "bad_shape": 1,
        "future_version": 1,
        "identity_mismatch": 1,
    }


async def test_accepted_updates_move_the_model_and_the_ledger(mosquitto, fleet, tmp_path):
    topics = Topics(fleet)
    agg = _aggregator(mosquitto.url, fleet, tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(agg.run(stop))
    await asyncio.wait_for(agg.wait_for_version(0), 15)
    delta = {k: np.full_like(v, 0.1) for k, v in init_weights(ARCH, 0).items()}
    kwargs = BrokerConfig.from_url(mosquitto.url).client_kwargs()
    async with aiomqtt.Client(**kwargs) as device:
        await device.subscribe(topics.aggregator_device("a"), qos=1)
        for seq in (0, 1, 1):  # the last is a replay
            update = Update.from_delta(
                delta, device="a", seq=seq, base_version=seq, num_samples=5, steps=1, loss=0.1
            )
            await device.publish(topics.update("a"), update.encode(), qos=1)
        await asyncio.wait_for(agg.wait_for_version(2), 10)
        while True:
            ledger = DeviceLedger.decode(bytes((await _first(device)).payload))
            if ledger.accepted + sum(ledger.rejected.values()) == 3:
                break
    stop.set()
    await task
    assert (ledger.accepted, ledger.rejected, ledger.last_seq) == (2, {"duplicate_seq": 1}, 1)
    assert ledger.samples == 10
    history = _history(tmp_path / "history.jsonl")
    assert [h["version"] for h in history][-1] == 2


async def test_a_fedbuff_buffer_that_cannot_fill_closes_at_the_deadline(mosquitto, fleet, tmp_path):
    agg = _aggregator(mosquitto.url, fleet, tmp_path, "fedbuff", round_deadline=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(agg.run(stop))
    await asyncio.wait_for(agg.wait_for_version(0), 15)
    delta = {k: np.full_like(v, 0.1) for k, v in init_weights(ARCH, 0).items()}
    update = Update.from_delta(
        delta, device="a", seq=0, base_version=0, num_samples=5, steps=1, loss=0.1
    )
    kwargs = BrokerConfig.from_url(mosquitto.url).client_kwargs()
    async with aiomqtt.Client(**kwargs) as device:
        await device.publish(Topics(fleet).update("a"), update.encode(), qos=1)
        # One update of K=5: only the deadline can turn it into version 1.
        await asyncio.wait_for(agg.wait_for_version(1), 10)
    stop.set()
    await task
    w0 = init_weights(ARCH, 0)
    for name, value in agg.strategy.weights.items():
        np.testing.assert_allclose(value, w0[name] + 0.1, rtol=1e-6)


async def test_a_refused_candidate_republishes_the_last_good_model_stamped_anew(
    mosquitto, fleet, tmp_path
):
    # The refused candidate took the pending updates with it; their devices, waiting for
    # a newer model, would otherwise wait for ever (a stalled fleet).
    from edge_agent.checks import follows

    topics = Topics(fleet)
    strategy = make_strategy("fedasync", init_weights(ARCH, 0), 0)
    cfg = AggregatorConfig(
        broker=BrokerConfig.from_url(mosquitto.url), fleet=fleet, out_dir=tmp_path,
        publish_interval=0.1, export_onnx=False, standardize=False, gate_max_weight=10.0,
    )  # fmt: skip
    agg = Aggregator(cfg, strategy, ARCH, Hyper())
    stop = asyncio.Event()
    task = asyncio.create_task(agg.run(stop))
    kwargs = BrokerConfig.from_url(mosquitto.url).client_kwargs()
    try:
        async with aiomqtt.Client(**kwargs) as device:
            await device.subscribe(topics.model_global, qos=1)
            first = GlobalModel.decode(bytes((await _first(device)).payload))
            huge = {k: np.full(v.shape, 50.0, np.float32) for k, v in first.weights.items()}
            update = Update.from_delta(
                huge, device="a", seq=0, base_version=0, num_samples=1, steps=1, loss=0.1
            )
            await device.publish(topics.update("a"), update.encode(), qos=1)
            again = GlobalModel.decode(bytes((await _first(device)).payload))
    finally:
        stop.set()
        await task
    assert agg.counters.rejected == {"model_rejected": 1}
    assert again.version == first.version == 0 and again.digest == first.digest
    assert follows(first, again)  # to a device holding v0: a model to train on again
