"""Chunking through a Mosquitto that drops payloads over 128 KiB, as AWS IoT Core does.

A 1.1 MB MLP trains over it (updates and the retained model in chunks, a late joiner
assembling the retained one); bad chunks sent raw are refused and counted and leave the
model as it was; a kill -9 between the chunks of an update loses nothing and applies
nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiomqtt
import msgpack
import numpy as np
import pytest

from aggregator.config import AggregatorConfig
from aggregator.service import Aggregator
from aggregator.strategies import make_strategy
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from fedmq.aio import TaskGroup
from fedmq.chunks import Chunk, Manifest, split
from fedmq.config import BrokerConfig
from fedmq.data import Dataset
from fedmq.model import Arch, init_weights
from fedmq.retained import collect_retained
from fedmq.topics import Topics
from fedmq.training import Hyper
from fedmq.wire import AggregatorStatus, GlobalModel, Update, weights_digest
from tests.conftest import PAYLOAD_CAP, SMALL_WINDOW

pytestmark = pytest.mark.broker
WIDE = Arch("mlp", (16, 512, 512, 3))  # 272,387 parameters: 1.09 MB of float32


def blobs(n: int, seed: int) -> Dataset:
    """Three Gaussian classes in 16 dimensions."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centers = np.random.default_rng(0).normal(0, 2, (3, 16))
    return Dataset((centers[y] + rng.normal(0, 1, (n, 16))).astype(np.float32), y)


async def until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Until ``check()`` holds: for state no event announces (counters, an agent's model)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_the_capped_broker_really_drops_a_200k_payload(mosquitto_128k, fleet) -> None:
    kwargs = BrokerConfig.from_url(mosquitto_128k.url).client_kwargs()
    topic = f"fl/{fleet}/model/global"
    async with aiomqtt.Client(**kwargs) as sub, aiomqtt.Client(**kwargs) as pub:
        await sub.subscribe(f"{topic}/#", qos=1)
        for size in (200 * 1024, PAYLOAD_CAP + 1, PAYLOAD_CAP):
            await pub.publish(f"{topic}/{size}", b"x" * size, qos=1)
        await pub.publish(f"{topic}/marker", b"end", qos=1)  # in order, after the others
        got = []
        async for m in sub.messages:
            got.append((str(m.topic).rsplit("/", 1)[1], len(m.payload)))
            if got[-1][0] == "marker":
                break
    assert got == [(str(PAYLOAD_CAP), PAYLOAD_CAP), ("marker", 3)]


async def test_a_1mb_model_trains_through_the_128k_broker(mosquitto_128k, fleet, tmp_path):
    broker = BrokerConfig.from_url(mosquitto_128k.url)
    agg = Aggregator(
        AggregatorConfig(
            broker=broker, fleet=fleet, out_dir=tmp_path / "agg", max_payload=PAYLOAD_CAP,
            export_onnx=False, standardize=False, status_interval=0.5,
        ),
        make_strategy("fedbuff", init_weights(WIDE, 0), 0, k=2),
        WIDE,
        Hyper(lr=0.05, epochs=1, batch=32),
    )  # fmt: skip

    def agent(i: int) -> Agent:
        cfg = AgentConfig(
            broker=broker, device=f"dev-{i}", fleet=fleet, state_dir=tmp_path / f"dev-{i}",
            seed=i, backoff_base=0.05, feature_stats=False, max_payload=PAYLOAD_CAP,
        )  # fmt: skip
        return Agent(cfg, blobs(200, seed=i))

    agents = [agent(0), agent(1)]
    stop = asyncio.Event()
    async with TaskGroup() as tg:
        tg.create_task(agg.run(stop))
        await asyncio.wait_for(agg.subscribed.wait(), 15)
        for a in agents:
            tg.create_task(a.run(stop))
        try:
            await asyncio.wait_for(agg.wait_for_version(3), 120)
            late = agent(2)  # joins after three versions: finds them only retained
            tg.create_task(late.run(stop))
            version = agg.published_version
            await until(lambda: late._latest is not None and late._latest.version >= version)
            found, _ = await retained_model(broker, Topics(fleet))
        finally:
            stop.set()
    assert agg.counters.rejected == {} and agg.counters.accepted >= 6
    # Every update went up in chunks, every one under the cap.
    assert all(a.stats.bytes_up / a.stats.updates_sent > 1_000_000 for a in agents)
    whole = Topics(fleet).model_global
    manifest = Manifest.decode(found.pop(whole))
    assert manifest.size > 1_000_000 and manifest.count == len(found) == 9
    assert all(len(p) <= PAYLOAD_CAP for p in found.values())
    assert manifest.version == late._latest.version
    assert weights_digest(WIDE, late._latest.weights) == late._latest.digest


async def retained_model(broker: BrokerConfig, topics: Topics) -> tuple[dict[str, bytes], list]:
    async with aiomqtt.Client(**broker.client_kwargs()) as c:
        return await collect_retained(c, [topics.model_global_filter], timeout=10)


def _raw_chunks(update: Update, device: str, limit: int = 1024) -> list[bytes]:
    return [c.encode() for c in split(update.encode(), "update", limit)]


SMALL = Arch("mlp", (4, 64, 3))  # a 2.2 KB update: three chunks at max_payload 1024


def _update(device: str, seq: int, base: int = 0) -> Update:
    delta = {k: np.full_like(v, 1e-3) for k, v in init_weights(SMALL, 0).items()}
    return Update.from_delta(
        delta, device=device, seq=seq, base_version=base, num_samples=10, steps=1, loss=0.5
    )


def _hostile(topics: Topics) -> list[tuple[str, bytes]]:
    """(topic, payload) of each case; the comment says how it must end."""
    ok = _raw_chunks(_update("ok", 0), "ok")  # accepted: the control
    good = split(_update("forger", 0).encode(), "update", 1024)
    forged = [  # consistent, but the digest of other bytes: chunk_digest
        Chunk(c.of, "f" * 64, c.size, c.count, c.index, c.data).encode() for c in good
    ]
    quitter = _raw_chunks(_update("quitter", 0), "quitter")[:-1]  # chunk_missing
    clash = split(_update("clash", 0).encode(), "update", 1024)
    other = Chunk(
        clash[0].of, clash[0].digest, clash[0].size, clash[0].count, 0, bytes(len(clash[0].data))
    )
    clashing = [clash[0].encode(), other.encode()]  # chunk_conflict
    huge = 9 * 2**20  # beyond max_update_bytes (8 MiB), in 100 chunks: too_large
    bloat = Chunk("update", "0" * 64, huge, 100, 0, bytes(-(-huge // 100))).encode()
    body = msgpack.unpackb(ok[0], raw=False)
    body["count"] = 5000  # beyond 4096: bad_value
    many = msgpack.packb(body, use_bin_type=True)
    mixup = [c.encode() for c in split(b"\x01" * 3000, "global_model", 1024)][:1]  # bad_kind
    return [
        *((topics.update("ok"), p) for p in ok),
        *((topics.update("forger"), p) for p in forged),
        *((topics.update("quitter"), p) for p in quitter),
        *((topics.update("clash"), p) for p in clashing),
        (topics.update("bloat"), bloat),
        (topics.update("many"), many),
        *((topics.update("mixup"), p) for p in mixup),
    ]


EXPECTED = {
    "chunk_digest": 1,
    "chunk_missing": 1,
    "chunk_conflict": 1,
    "too_large": 1,
    "bad_value": 1,
    "bad_kind": 1,
}


def _quick_sweep(url: str, fleet: str, out: Path, strategy: str = "fedasync") -> Aggregator:
    """An aggregator (ledger, so chunks are held unacknowledged) that times chunks out
    after 1 s; FedAsync applies each update, FedBuff (K=10) keeps one pending."""
    return Aggregator(
        AggregatorConfig(
            broker=BrokerConfig.from_url(url), fleet=fleet, out_dir=out, standardize=False,
            export_onnx=False, chunk_timeout=1.0, metrics_port=0,
        ),
        make_strategy(strategy, init_weights(SMALL, 0), 0),
        SMALL,
        Hyper(),
    )  # fmt: skip


@contextlib.asynccontextmanager
async def _serving(agg: Aggregator) -> AsyncIterator[None]:
    """``agg`` running with its first model published; stopped on the way out."""
    stop = asyncio.Event()
    task = asyncio.create_task(agg.run(stop))
    try:
        await asyncio.wait_for(agg.wait_for_version(0), 15)
        yield
    finally:
        stop.set()
        await task


async def test_bad_chunks_from_mosquitto_pub_are_refused_counted_and_change_nothing(
    mosquitto_128k, fleet, tmp_path
) -> None:
    pub = shutil.which("mosquitto_pub")
    assert pub, "mosquitto_pub is missing: apt-get install mosquitto-clients"
    topics = Topics(fleet)
    agg = _quick_sweep(mosquitto_128k.url, fleet, tmp_path, "fedbuff")  # one update pending
    async with _serving(agg):
        before = weights_digest(SMALL, agg.strategy.weights)
        base = ["-h", "127.0.0.1", "-p", str(mosquitto_128k.port), "-q", "1"]
        for n, (topic, payload) in enumerate(_hostile(topics)):
            path = tmp_path / f"case-{n}.bin"
            path.write_bytes(payload)
            cmd = [pub, *base, "-t", topic, "-f", str(path)]
            await asyncio.to_thread(subprocess.run, cmd, check=True, timeout=10)
        # The daemon's own counters: mosquitto_pub has no receipt, and chunk_missing
        # comes only after chunk_timeout.
        await until(lambda: sum(agg.counters.rejected.values()) >= sum(EXPECTED.values()))
        await until(lambda: agg.counters.accepted >= 1)
        url = f"http://127.0.0.1:{agg.metrics.port}/metrics"
        metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode())
    assert dict(agg.counters.rejected) == EXPECTED
    assert agg.counters.accepted == 1
    assert (agg.strategy.version, weights_digest(SMALL, agg.strategy.weights)) == (0, before)
    assert len(agg.inbox.chunks) == 0 and agg.inbox.chunks.nbytes == 0  # nothing held
    for reason in EXPECTED:
        assert f'fedmq_updates_total{{reason="{reason}",result="rejected"}} 1.0' in metrics


def _spawn(url: str, fleet: str, out: Path, log) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from tools.entry import main; main()", "aggregator"]
    cmd += ["--broker", url, "--fleet", fleet, "--model", "mlp:4,64,3", "--strategy"]
    cmd += ["fedasync", "--out-dir", str(out), "--no-standardize", "--no-export-onnx"]
    return subprocess.Popen([*cmd, "--status-interval", "0.2"], stderr=log)


async def _status(
    client: aiomqtt.Client, check: Callable[[AggregatorStatus], bool]
) -> AggregatorStatus:
    """The first retained status heartbeat that passes ``check``."""

    async def first() -> AggregatorStatus:
        async for m in client.messages:
            if m.topic.value.endswith("/aggregator/status"):
                status = AggregatorStatus.decode(bytes(m.payload))
                if check(status):
                    return status
        raise AssertionError("the status stream ended")

    return await asyncio.wait_for(first(), 30)


async def test_kill_9_between_chunks_loses_nothing_and_applies_once(mosquitto, fleet, tmp_path):
    topics = Topics(fleet)
    kwargs = BrokerConfig.from_url(mosquitto.url).client_kwargs()
    chunks = _raw_chunks(_update("dev", 0), "dev")
    assert len(chunks) == 3
    log = (tmp_path / "aggregator.log").open("ab")
    async with aiomqtt.Client(**kwargs) as dev, aiomqtt.Client(**kwargs) as watch:
        await watch.subscribe(topics.aggregator_status, qos=1)
        launched = time.time()
        agg = _spawn(mosquitto.url, fleet, tmp_path, log)
        try:
            await _status(watch, lambda s: s.state == "serving" and s.started_at >= launched)
            for payload in [*chunks[:2], b"hello"]:  # the garbage marks "handled up to here"
                await dev.publish(topics.update("dev"), payload, qos=1)
            await _status(watch, lambda s: s.rejected.get("malformed") == 1)
            agg.kill()  # two chunks held, unacknowledged
            agg.wait()
            launched = time.time()
            agg = _spawn(mosquitto.url, fleet, tmp_path, log)
            await _status(watch, lambda s: s.state == "serving" and s.started_at >= launched)
            await dev.publish(topics.update("dev"), chunks[2], qos=1)
            await _status(watch, lambda s: s.accepted == 1 and s.version == 1)
            # The whole update again, then a marker: applied once, and nothing else counted.
            for payload in [*chunks, b"hello"]:
                await dev.publish(topics.update("dev"), payload, qos=1)
            status = await _status(watch, lambda s: s.rejected.get("malformed") == 2)
            found, _ = await collect_retained(watch, [topics.model_global], timeout=10)
        finally:
            agg.kill()
            agg.wait()
            log.close()
    assert (status.accepted, status.rejected, status.version) == (1, {"malformed": 2}, 1)
    assert GlobalModel.decode(found[topics.model_global]).version == 1


def _stall_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "max_inflight_messages" in r.getMessage()
    ]


async def test_a_small_broker_window_stalls_partial_updates_and_is_warned_once(
    mosquitto_small_window, fleet, tmp_path, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="fedmq.aggregator")
    topics = Topics(fleet)
    agg = _quick_sweep(mosquitto_small_window.url, fleet, tmp_path)
    kwargs = BrokerConfig.from_url(mosquitto_small_window.url).client_kwargs()
    a, b = _raw_chunks(_update("a", 0), "a"), _raw_chunks(_update("b", 0), "b")
    assert len(a) == len(b) == 3 > SMALL_WINDOW / 2
    async with _serving(agg), aiomqtt.Client(**kwargs) as dev:
        # Interleaved: the first two chunks of each fill the window, and the broker
        # holds back the third ones that would complete them.
        for pa, pb in zip(a, b, strict=True):
            await dev.publish(topics.update("a"), pa, qos=1)
            await dev.publish(topics.update("b"), pb, qos=1)
        # Both resolve: timed out together, or b completes once a's refusal frees
        # the window.
        await until(lambda: agg.counters.rejected["chunk_missing"] + agg.counters.accepted == 2)
        refused, accepted = agg.counters.rejected["chunk_missing"], agg.counters.accepted
        # The aggregator goes on: later updates, chunked and whole, are applied.
        for payload in _raw_chunks(_update("a", 1), "a"):
            await dev.publish(topics.update("a"), payload, qos=1)
        await dev.publish(topics.update("b"), _update("b", 1).encode(), qos=1)
        await until(lambda: agg.counters.accepted == accepted + 2)
    assert refused >= 1 and dict(agg.counters.rejected) == {"chunk_missing": refused}
    assert agg.inbox.stalls.count == 1
    assert agg.metrics.snapshot()["fedmq_chunk_window_stalls_total"] == 1
    [line] = _stall_warnings(caplog)
    assert "4 chunks of 2 partial updates" in line


async def test_a_device_dying_mid_update_is_no_window_stall(
    mosquitto, fleet, tmp_path, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="fedmq.aggregator")
    topics = Topics(fleet)
    agg = _quick_sweep(mosquitto.url, fleet, tmp_path)
    kwargs = BrokerConfig.from_url(mosquitto.url).client_kwargs()
    async with _serving(agg), aiomqtt.Client(**kwargs) as dev:
        for device in ("a", "b"):  # two devices die after two of their three chunks
            for payload in _raw_chunks(_update(device, 0), device)[:2]:
                await dev.publish(topics.update(device), payload, qos=1)
        # The rest of the fleet goes on until the partials time out (bounded: 20 s).
        for seq in range(200):
            if agg.counters.rejected["chunk_missing"] == 2:
                break
            await dev.publish(topics.update("c"), _update("c", seq).encode(), qos=1)
            await asyncio.sleep(0.1)
    assert agg.counters.rejected == {"chunk_missing": 2} and agg.counters.accepted >= 5
    assert agg.inbox.stalls.count == 0 and _stall_warnings(caplog) == []
    assert agg.metrics.snapshot()["fedmq_chunk_window_stalls_total"] == 0
