"""Reading a fleet's retained state over a real broker, with a definite end."""

from __future__ import annotations

import asyncio
import time

import aiomqtt
import pytest

from fedmq.chunks import Manifest, split
from fedmq.config import BrokerConfig
from fedmq.errors import BrokerError
from fedmq.model import Arch, init_weights
from fedmq.topics import Topics
from fedmq.training import Hyper
from fedmq.wire import AggregatorStatus, DeviceLedger, DeviceStatus, GlobalModel, new_run
from tools.broker import LOOPBACK, LocalBroker
from tools.broker.base import free_port
from tools.ops.fleet import FleetSnapshot, filters, select
from tools.ops.jsonify import payload_json
from tools.ops.retained import read_retained

NOW = 1_700_000_000.0


def status(device: str, state: str = "idle", model_version: int = 3, **kw) -> DeviceStatus:
    values = dict(
        device=device,
        state=state,
        agent_version="0.1.0",
        model_version=model_version,
        samples=120,
        last_seq=9,
        last_loss=0.25,
        cpu=0.5,
        rss=30_000_000,
        at=NOW,
    )
    return DeviceStatus(**{**values, **kw})


def ledger(device: str, accepted: int = 8) -> DeviceLedger:
    return DeviceLedger(
        device=device,
        accepted=accepted,
        rejected={"norm_bound": 2},
        last_seq=9,
        last_staleness=1,
        samples=960,
        first_seen=NOW - 60,
        last_seen=NOW + 1,
    )


def aggregator(version: int = 10) -> AggregatorStatus:
    return AggregatorStatus(
        state="serving",
        strategy="fedbuff",
        params={"k": 10},
        version=version,
        accepted=100,
        rejected={},
        last_accuracy=0.9,
        last_loss=0.3,
        started_at=NOW - 100,
        at=NOW,
    )


async def publish_retained(broker: LocalBroker, messages: dict[str, bytes]) -> None:
    async with aiomqtt.Client(LOOPBACK, broker.port) as c:
        for topic, payload in messages.items():
            await c.publish(topic, payload, qos=1, retain=True)


def test_every_retained_message_is_read_and_nothing_else(broker: LocalBroker, fleet: str) -> None:
    topics = Topics(fleet)
    messages = {topics.device_status(f"d{i:03d}"): status(f"d{i:03d}").encode() for i in range(60)}
    messages[topics.aggregator_status] = aggregator().encode()
    messages[topics.aggregator_device("d000")] = ledger("d000").encode()
    other = Topics(f"{fleet[:50]}-other")
    messages[other.device_status("stranger")] = status("stranger").encode()

    async def scenario() -> dict[str, bytes]:
        await publish_retained(broker, messages)
        cfg = BrokerConfig.from_url(f"mqtt://{LOOPBACK}:{broker.port}")
        return await read_retained(cfg, filters(topics), timeout=5)

    got = asyncio.run(scenario())
    assert set(got) == {t for t in messages if t.startswith(f"fl/{fleet}/")}
    assert got[topics.device_status("d059")] == messages[topics.device_status("d059")]


def test_fleet_rows_merge_status_ledger_and_version(broker: LocalBroker, fleet: str) -> None:
    topics = Topics(fleet)
    messages = {
        topics.device_status("a"): status("a", "training", model_version=10).encode(),
        topics.device_status("b"): status("b", "offline", model_version=4).encode(),
        topics.aggregator_device("a"): ledger("a").encode(),
        topics.aggregator_device("gone"): ledger("gone", accepted=3).encode(),
        topics.aggregator_status: aggregator(version=10).encode(),
        topics.device_status("junk"): b"\x93not-msgpack",
    }

    async def scenario() -> dict[str, bytes]:
        await publish_retained(broker, messages)
        cfg = BrokerConfig.from_url(f"mqtt://{LOOPBACK}:{broker.port}")
        return await read_retained(cfg, filters(topics), timeout=5)

    snap = FleetSnapshot.from_retained(fleet, asyncio.run(scenario()))
    rows = {r["device"]: r for r in snap.rows()}
    assert set(rows) == {"a", "b", "gone"}
    assert rows["a"]["state"] == "training" and rows["a"]["staleness"] == 0
    assert rows["a"]["accepted"] == 8 and rows["a"]["rejected"] == {"norm_bound": 2}
    assert rows["a"]["updates_sent"] == 10 and rows["a"]["last_seen"] == NOW + 1
    assert rows["b"]["state"] == "offline" and rows["b"]["staleness"] == 6
    assert rows["gone"]["state"] == "offline" and rows["gone"]["model_version"] is None
    assert rows["gone"]["updates_sent"] == 10  # no status: the aggregator's ledger knows seq 9
    assert topics.device_status("junk") in snap.problems
    assert [r["device"] for r in select(snap.rows(), stale_over=5)] == ["b"]
    assert [r["device"] for r in select(snap.rows(), sort="staleness")] == ["a", "b", "gone"]
    assert snap.state_counts()["offline"] == 2


def test_an_unreachable_broker_is_one_error_within_the_timeout() -> None:
    cfg = BrokerConfig.from_url(f"mqtt://{LOOPBACK}:{free_port()}")
    started = time.monotonic()
    with pytest.raises(BrokerError) as info:
        asyncio.run(read_retained(cfg, ["fl/x/#"], timeout=2))
    assert info.value.reason == "broker_unreachable"
    assert time.monotonic() - started < 4


def test_payload_json_summarises_and_never_raises() -> None:
    topics = Topics("f")
    out = payload_json(topics.device_status("a"), status("a").encode())
    assert out["kind"] == "device_status" and out["device"] == "a"
    bad = payload_json(topics.device_status("a"), b"\xc1")
    assert "error" in bad and bad["bytes"] == 1
    assert payload_json("not/a/fedmq/topic", b"x")["error"]
    # A chunked model's manifest and chunks are shown, the chunk's bytes as their size.
    chunked = _chunked(topics, _model(), 1024)
    manifest = payload_json(topics.model_global, chunked[topics.model_global])
    assert manifest["kind"] == "model_manifest" and manifest["version"] == 4
    piece = payload_json(topics.model_chunk(0), chunked[topics.model_chunk(0)])
    assert piece["kind"] == "chunk" and piece["index"] == 0 and piece["data"]["bytes"] > 0


def _chunked(topics: Topics, model: GlobalModel, max_payload: int) -> dict[str, bytes]:
    """The retained topics of ``model`` as the publisher leaves them: chunks + manifest."""
    payload = model.encode()
    chunks = split(payload, "global_model", max_payload)
    out = {topics.model_chunk(c.index): c.encode() for c in chunks}
    manifest = Manifest(model.run, model.version, chunks[0].digest, len(payload), len(chunks))
    return {**out, topics.model_global: manifest.encode()}


def _model(version: int = 4) -> GlobalModel:
    arch = Arch("mlp", (16, 64, 3))
    return GlobalModel.build(version, arch, init_weights(arch, 1), Hyper(), run=new_run(),
                             created_at=NOW)  # fmt: skip


def test_a_model_retained_in_chunks_is_put_together_from_its_manifest() -> None:
    topics, model = Topics("f"), _model()
    retained = _chunked(topics, model, 1024)
    assert len(retained) > 3  # a manifest and several chunks
    snap = FleetSnapshot.from_retained("f", retained)
    assert snap.model is not None and snap.model.digest == model.digest and not snap.problems
    # A junk chunk topic beside them changes nothing; a missing chunk is one problem.
    junk = {**retained, topics.model_chunk(99): b"\x93junk"}
    assert FleetSnapshot.from_retained("f", junk).model.digest == model.digest
    del retained[topics.model_chunk(1)]
    broken = FleetSnapshot.from_retained("f", retained)
    assert broken.model is None
    assert "chunk_missing" in broken.problems[topics.model_global]


def test_a_chunked_model_is_read_over_a_broker(broker: LocalBroker, fleet: str) -> None:
    topics, model = Topics(fleet), _model(7)
    asyncio.run(publish_retained(broker, _chunked(topics, model, 4096)))
    found = asyncio.run(read_retained(BrokerConfig.from_url(broker.url), filters(topics)))
    snap = FleetSnapshot.from_retained(fleet, found)
    assert snap.model is not None and snap.model.version == 7
    assert snap.model.digest == model.digest
