"""fedmq's own broker: topic rules, the packet decoder, and what only it has (bounded
QoS 0 memory, the drop summary line; issue 10 §8), driven over TCP with raw clients.

The other defects of §8 (keepalive while not reading, takeover, QoS 2) are cases of
test_same_behaviour.py, which runs them against Mosquitto too.
"""

from __future__ import annotations

import asyncio
import logging
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rawmqtt import (
    RawClients,
    publish_packet,
)

from tools.broker import LocalBroker
from tools.broker.mqtt_codec import (
    ConnectRequest,
    Fields,
    ProtocolError,
    parse_connect,
    read_packet,
    topic_matches,
    valid_filter,
    valid_topic,
)

MB = 1024 * 1024


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("fl/a/updates/+", "fl/a/updates/d1", True),
        ("fl/a/updates/+", "fl/a/updates/d1/x", False),
        ("fl/a/updates/+", "fl/a/updates", False),
        ("fl/a/#", "fl/a", True),  # "#" also matches the parent level
        ("fl/a/#", "fl/a/devices/d1/status", True),
        ("fl/a/#", "fl/b/model/global", False),
        ("fl/+/model/global", "fl/a/model/global", True),
        ("+/+", "/x", True),  # an empty level is a level
        ("#", "fl/a", True),
        ("#", "$SYS/broker/uptime", False),  # §4.7.2
        ("+/broker/uptime", "$SYS/broker/uptime", False),
        ("$SYS/#", "$SYS/broker/uptime", True),
        ("fl/a", "fl/a", True),
        ("fl/a", "fl/A", False),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, matches: bool) -> None:
    assert topic_matches(topic_filter, topic) is matches


@pytest.mark.parametrize(
    ("topic_filter", "valid"),
    [
        ("fl/+/updates/#", True),
        ("#", True),
        ("+", True),
        ("fl/#/x", False),
        ("fl/a#", False),
        ("fl/a+/x", False),
        ("", False),
    ],
)
def test_valid_filter(topic_filter: str, valid: bool) -> None:
    assert valid_filter(topic_filter) is valid


@pytest.mark.parametrize(("topic", "valid"), [("fl/a/x", True), ("fl/+/x", False), ("", False)])
def test_valid_topic(topic: str, valid: bool) -> None:
    assert valid_topic(topic) is valid


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_refuses_garbage_cleanly(data: bytes) -> None:
    """Any bytes: a packet, or ProtocolError / IncompleteReadError, never anything else."""

    async def decode() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        try:
            kind, _, body = await read_packet(reader, max_packet=256)
            outcome = parse_connect(Fields(body)) if kind == 1 else None
            assert outcome is None or isinstance(outcome, ConnectRequest | int)
        except (ProtocolError, asyncio.IncompleteReadError):
            pass

    asyncio.run(decode())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=4))
def test_garbage_after_connect_never_breaks_the_broker(
    embedded_broker_session: LocalBroker, garbage: list[bytes]
) -> None:
    port = embedded_broker_session.port

    async def scenario() -> None:
        raw = RawClients()
        try:
            c, _ = await raw.connect(port, "fuzz")
            for chunk in garbage:
                c.send(chunk)
            c.abort()
            other, _ = await raw.connect(port, "fuzz-check")  # still serving
            await other.ping()
        finally:
            await raw.aclose()

    asyncio.run(scenario())


async def test_qos0_to_a_slow_subscriber_uses_bounded_memory(
    embedded_broker: LocalBroker, fleet: str, raw: RawClients
) -> None:
    """60 MB of QoS 0 to a client that never reads. Before the fix all of it piled up in
    the broker (+280 MB for 30,000 x 10 KB); now the queue drops past its bound."""
    port, big = embedded_broker.port, f"fl/{fleet}/big"
    slow, _ = await raw.connect(port, f"{fleet}-slow", rcvbuf=4096)
    await slow.subscribe(big, 0)
    pub, _ = await raw.connect(port, f"{fleet}-pub")
    message = publish_packet(big, bytes(10_000))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(6_000):
            pub.send(message)
            if i % 100 == 0:
                await pub.writer.drain()
        await pub.publish(f"fl/{fleet}/barrier", b"", qos=1)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 20 * MB, f"the broker holds {grown / MB:.0f} MB for one slow client"


async def test_drops_are_one_summary_line(
    new_broker: Callable[..., LocalBroker],
    fleet: str,
    raw: RawClients,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """200 QoS 1 messages for an offline session with room for 10: one warning naming the
    client and the 190 dropped. Before the fix: 190 warnings, one per message."""
    broker = new_broker("embedded", max_queued=10)
    await asyncio.to_thread(broker.start)
    away = f"{fleet}-away"
    c, _ = await raw.connect(broker.port, away, clean=False)
    await c.subscribe(f"fl/{fleet}/x", 1)
    await c.disconnect()
    pub, _ = await raw.connect(broker.port, f"{fleet}-pub")
    with caplog.at_level(logging.WARNING, logger="tools.broker"):
        for i in range(200):
            await pub.publish(f"fl/{fleet}/x", b"m", qos=1, packet_id=i + 1)
        await asyncio.to_thread(broker.stop)  # the pending summary is logged at the stop
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings[:3]
    assert f"{away} 190" in warnings[0]


async def test_drop_summary_comes_once_per_interval(
    new_broker: Callable[..., LocalBroker], fleet: str, raw: RawClients
) -> None:
    """Two bursts of drops an interval apart: two lines, each with its own burst's count."""
    broker = new_broker("embedded", max_queued=1, drop_log_interval=2.0)
    await asyncio.to_thread(broker.start)
    lines: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            loop.call_soon_threadsafe(lines.put_nowait, record.getMessage())

    handler = Collect(logging.WARNING)
    logging.getLogger("tools.broker").addHandler(handler)
    try:
        away = f"{fleet}-away"
        c, _ = await raw.connect(broker.port, away, clean=False)
        await c.subscribe(f"fl/{fleet}/x", 1)
        await c.disconnect()
        pub, _ = await raw.connect(broker.port, f"{fleet}-pub")
        for sent, dropped in ((6, 5), (4, 4)):  # the first message takes the one free slot
            for i in range(sent):
                await pub.publish(f"fl/{fleet}/x", b"m", qos=1, packet_id=i + 1)
            line = await asyncio.wait_for(lines.get(), 10)
            assert f"{away} {dropped} (queue full)" in line
            assert lines.empty()
    finally:
        logging.getLogger("tools.broker").removeHandler(handler)
