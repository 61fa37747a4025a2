"""fedmq's own broker: topic rules, the packet decoder, and the defects found against
Mosquitto 2 (issue 10 §8), each driven over TCP with raw clients.

Behaviour shared with Mosquitto is in test_same_behaviour.py.
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
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    RawClient,
    RawClients,
    ack_packet,
    connect_packet,
    frame,
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


async def test_keepalive_holds_while_the_broker_waits_to_write(
    embedded_broker: LocalBroker, fleet: str, raw: RawClients
) -> None:
    """Keepalive 3, 30 MB the client never reads, one PINGREQ, silence: dropped, will out
    (Mosquitto: about 10 s). Before the fix the reading side hung in drain() forever."""
    port, status, big = embedded_broker.port, f"fl/{fleet}/status", f"fl/{fleet}/big"
    watcher, _ = await raw.connect(port, f"{fleet}-watcher")
    await watcher.subscribe(status, 1)
    will = (status, b"gone", 1, False)
    slow, _ = await raw.connect(port, f"{fleet}-slow", rcvbuf=4096, keepalive=3, will=will)
    await slow.subscribe(big, 0)
    pub, _ = await raw.connect(port, f"{fleet}-pub")
    for _ in range(30):
        pub.send(publish_packet(big, bytes(MB)))
        await pub.writer.drain()
    await pub.publish(f"fl/{fleet}/barrier", b"", qos=1)  # all 30 MB routed to `slow`
    slow.send(frame(0xC0))  # one PINGREQ, then silence
    loop = asyncio.get_running_loop()
    started = loop.time()
    message = await watcher.expect(PUBLISH, within=20)
    assert (message.topic, message.payload) == (status, b"gone")
    assert loop.time() - started < 3 * 1.5 + 3


async def test_simultaneous_connects_with_one_id_leave_exactly_one(
    embedded_broker: LocalBroker, fleet: str, raw: RawClients
) -> None:
    """Two CONNECTs with an id in use, arriving together: the old connection and one of
    the two are closed, the survivor gets messages. Before the fix both stayed (10/10)."""
    port = embedded_broker.port
    pub, _ = await raw.connect(port, f"{fleet}-pub")
    for trial in range(10):
        client_id, topic = f"{fleet}-d{trial}", f"fl/{fleet}/t{trial}"
        first, _ = await raw.connect(port, client_id)
        a, b = await raw.open(port), await raw.open(port)
        a.send(connect_packet(client_id))
        b.send(connect_packet(client_id))
        assert await first.closed()
        connacked = await asyncio.gather(_first_is_connack(a), _first_is_connack(b))
        alive = [c for c, ok in zip((a, b), connacked, strict=True) if ok and await _pings(c)]
        assert len(alive) == 1, f"trial {trial}: {len(alive)} connections survived"
        await alive[0].subscribe(topic, 1)
        await pub.publish(topic, b"to-the-survivor", qos=1)
        assert (await alive[0].expect(PUBLISH)).payload == b"to-the-survivor"
        alive[0].abort()


async def _first_is_connack(c: RawClient) -> bool:
    try:
        return (await c.read()).kind == 2
    except (asyncio.IncompleteReadError, ConnectionError):
        return False


async def _pings(c: RawClient) -> bool:
    try:
        await c.ping()
        return True
    except (asyncio.IncompleteReadError, ConnectionError):
        return False


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


async def test_mosquitto_pub_qos2_is_delivered_at_qos2(
    embedded_broker: LocalBroker, fleet: str, raw: RawClients
) -> None:
    """Before the fix a QoS 2 PUBLISH closed the connection: mosquitto_pub -q 2 failed."""
    port, topic = embedded_broker.port, f"fl/{fleet}/q2"
    sub, _ = await raw.connect(port, f"{fleet}-sub")
    assert await sub.subscribe(topic, 2) == 2
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-p", str(port), "-q", "2", "-t", topic, "-m", "once",
        "-i", f"{fleet}-pub",
    )  # fmt: skip
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    message = await sub.expect(PUBLISH)
    assert (message.payload, message.qos) == (b"once", 2)
    sub.send(ack_packet(PUBREC, message.packet_id))
    assert (await sub.expect(PUBREL)).packet_id == message.packet_id
    sub.send(ack_packet(PUBCOMP, message.packet_id))


async def test_qos2_publisher_resumes_its_flow_after_reconnecting(
    embedded_broker: LocalBroker, fleet: str, raw: RawClients
) -> None:
    """A persistent publisher cut off after PUBREC resends, then releases: one copy.
    Before the fix it was cut off again on every reconnect."""
    port, topic = embedded_broker.port, f"fl/{fleet}/q2"
    sub, _ = await raw.connect(port, f"{fleet}-sub")
    await sub.subscribe(topic, 1)
    pub, _ = await raw.connect(port, f"{fleet}-pub", clean=False)
    pub.send(publish_packet(topic, b"exactly-once", qos=2, packet_id=7))
    await pub.expect(PUBREC)
    pub.abort()
    pub, present = await raw.connect(port, f"{fleet}-pub", clean=False)
    assert present
    pub.send(publish_packet(topic, b"exactly-once", qos=2, packet_id=7))
    await pub.expect(PUBREC)
    pub.send(ack_packet(PUBREL, 7))
    await pub.expect(PUBCOMP)
    await pub.publish(topic, b"marker", qos=1, packet_id=8)
    got = [await sub.expect(PUBLISH) for _ in range(2)]
    assert [m.payload for m in got] == [b"exactly-once", b"marker"]


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


async def test_outgoing_qos2_resumes_with_pubrel_after_reconnect(
    embedded_broker: LocalBroker, fleet: str, raw: RawClients
) -> None:
    """Persistent in-flight QoS 2: PUBREC sent, cut off before PUBCOMP; the broker resends
    PUBREL (not the message) on reconnect (§4.4)."""
    port, topic = embedded_broker.port, f"fl/{fleet}/q2"
    sub, _ = await raw.connect(port, f"{fleet}-sub", clean=False)
    await sub.subscribe(topic, 2)
    pub, _ = await raw.connect(port, f"{fleet}-pub")
    await pub.publish(topic, b"once", qos=2)
    message = await sub.expect(PUBLISH)
    sub.send(ack_packet(PUBREC, message.packet_id))
    await sub.expect(PUBREL)
    sub.abort()
    sub, present = await raw.connect(port, f"{fleet}-sub", clean=False)
    assert present
    again = await sub.expect(PUBREL)
    assert again.packet_id == message.packet_id
    sub.send(ack_packet(PUBCOMP, again.packet_id))
    await pub.publish(topic, b"next", qos=1, packet_id=2)
    assert (await sub.expect(PUBLISH)).payload == b"next"
