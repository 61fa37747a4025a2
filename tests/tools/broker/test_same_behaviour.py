"""The same cases against Mosquitto 2 (broker_config/dev.conf) and the embedded broker,
which must give the same observable results (issue 10, "Embedded broker").

Every case runs once per broker (the ``broker`` fixture) and compares what a client sees
with one expected value, so a difference between the brokers fails on one of them. The
expected values are what Mosquitto 2.0 does. Waits are on packets, each bounded; a
"nothing else" claim is checked with a marker published after it, which must come next.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
import pytest
from rawmqtt import (
    PUBLISH,
    PUBREL,
    RawClient,
    RawClients,
    ack_packet,
    connect_packet,
    publish_packet,
    receive,
    until,
)

from tools.broker import LOOPBACK, LocalBroker

pytestmark = pytest.mark.broker

MB = 1024 * 1024


def client(broker: LocalBroker, fleet: str, name: str, **options: Any) -> aiomqtt.Client:
    return aiomqtt.Client(LOOPBACK, broker.port, identifier=f"{fleet}-{name}", **options)


async def next_message(c: aiomqtt.Client, within: float = 10.0) -> aiomqtt.Message:
    return await asyncio.wait_for(anext(c.messages), within)


@pytest.mark.parametrize(("pub_qos", "sub_qos"), [(p, s) for p in (0, 1, 2) for s in (0, 1, 2)])
async def test_delivery_at_the_lower_qos(
    broker: LocalBroker, fleet: str, pub_qos: int, sub_qos: int
) -> None:
    topic = f"fl/{fleet}/q"
    async with client(broker, fleet, "sub") as sub, client(broker, fleet, "pub") as pub:
        await sub.subscribe(topic, qos=sub_qos)
        await pub.publish(topic, b"m", qos=pub_qos)
        message = await next_message(sub)
    assert (message.payload, message.qos, message.retain) == (b"m", min(pub_qos, sub_qos), False)


async def test_mosquitto_clients_at_qos2(broker: LocalBroker, fleet: str) -> None:
    topic = f"fl/{fleet}/q2"
    sub = await asyncio.create_subprocess_exec(
        "stdbuf", "-oL",  # line-buffered: "Subscribed" must come out before we publish
        "mosquitto_sub", "-p", str(broker.port), "-q", "2", "-t", topic, "-C", "1", "-d",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert sub.stdout is not None
        output = []
        while b"Subscribed" not in (line := await asyncio.wait_for(sub.stdout.readline(), 10)):
            output.append(line)
        assert b": 2" in line  # granted QoS 2
        pub = await asyncio.create_subprocess_exec(
            "mosquitto_pub", "-p", str(broker.port), "-q", "2", "-t", topic, "-m", "exactly-once",
            "-d", stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        pub_out, _ = await asyncio.wait_for(pub.communicate(), 10)
        assert pub.returncode == 0
        assert b"received PUBREC" in pub_out and b"received PUBCOMP" in pub_out
        rest, _ = await asyncio.wait_for(sub.communicate(), 10)
    finally:
        if sub.returncode is None:
            sub.kill()
            await sub.wait()
    assert sub.returncode == 0
    assert b"received PUBLISH (d0, q2, r0," in rest and b"\nexactly-once\n" in rest
    assert b"received PUBREL" in rest and b"sending PUBCOMP" in rest


async def test_retained_set_replace_and_clear(
    broker: LocalBroker, fleet: str, raw: RawClients
) -> None:
    topic, port = f"fl/{fleet}/model/global", broker.port
    pub, _ = await raw.connect(port, f"{fleet}-pub")
    seen = []
    for payload in (b"v1", b"v2", b""):  # set, replace, clear (empty payload)
        await pub.publish(topic, payload, qos=1, retain=True)
        late, _ = await raw.connect(port, f"{fleet}-late")
        await late.subscribe(topic, 1)
        await pub.publish(topic, b"marker", qos=1)
        seen.append([(m.payload, m.retain) for m in await until(late, b"marker")])
        await late.disconnect()
    assert seen == [[(b"v1", True)], [(b"v2", True)], []]


async def test_a_retained_publish_reaches_live_subscribers_without_the_flag(
    broker: LocalBroker, fleet: str, raw: RawClients
) -> None:
    topic = f"fl/{fleet}/model/global"
    sub, _ = await raw.connect(broker.port, f"{fleet}-sub")
    await sub.subscribe(topic, 1)
    pub, _ = await raw.connect(broker.port, f"{fleet}-pub")
    await pub.publish(topic, b"v1", qos=1, retain=True)
    message = await receive(sub)
    await pub.publish(topic, b"", qos=1, retain=True)  # leave nothing retained behind
    assert (message.payload, message.retain) == (b"v1", False)


async def test_offline_queueing_for_a_persistent_session(
    broker: LocalBroker, fleet: str, raw: RawClients
) -> None:
    """QoS 1 and 2 wait for an offline persistent session; QoS 0 does not."""
    topic, port, name = f"fl/{fleet}/updates/d1", broker.port, f"{fleet}-agg"
    agg, present = await raw.connect(port, name, clean=False)
    assert not present
    await agg.subscribe(f"fl/{fleet}/updates/+", 2)
    await agg.disconnect()
    pub, _ = await raw.connect(port, f"{fleet}-pub")
    for qos in (0, 1, 2):
        await pub.publish(topic, f"q{qos}".encode(), qos=qos)
    agg, present = await raw.connect(port, name, clean=False)
    queued = [(m.payload, m.qos) for m in [await receive(agg), await receive(agg)]]
    await pub.publish(topic, b"marker", qos=1)
    rest = await until(agg, b"marker")
    assert (present, queued, rest) == (True, [(b"q1", 1), (b"q2", 2)], [])


async def test_unacknowledged_qos1_is_redelivered_on_reconnect(
    broker: LocalBroker, fleet: str, raw: RawClients
) -> None:
    topic, port, name = f"fl/{fleet}/updates/d1", broker.port, f"{fleet}-agg"
    agg, _ = await raw.connect(port, name, clean=False)
    await agg.subscribe(topic, 1)
    pub, _ = await raw.connect(port, f"{fleet}-pub")
    await pub.publish(topic, b"delta", qos=1)
    first = await agg.expect(PUBLISH)  # not acknowledged
    agg.abort()
    agg, present = await raw.connect(port, name, clean=False)
    again = await receive(agg)
    await pub.publish(topic, b"marker", qos=1)
    rest = await until(agg, b"marker")
    assert (first.dup, first.qos) == (False, 1)
    assert (present, again.payload, again.qos, again.dup, rest) == (True, b"delta", 1, True, [])
    assert again.packet_id == first.packet_id


async def test_unreleased_qos2_resends_pubrel_on_reconnect(
    broker: LocalBroker, fleet: str, raw: RawClients
) -> None:
    """PUBREC sent, cut off before PUBCOMP: the broker resends PUBREL, not the message."""
    topic, port, name = f"fl/{fleet}/q2", broker.port, f"{fleet}-sub"
    sub, _ = await raw.connect(port, name, clean=False)
    await sub.subscribe(topic, 2)
    pub, _ = await raw.connect(port, f"{fleet}-pub")
    await pub.publish(topic, b"once", qos=2)
    first = await receive(sub)  # sends PUBREC
    assert (await sub.expect(PUBREL)).packet_id == first.packet_id
    sub.abort()
    sub, present = await raw.connect(port, name, clean=False)
    again = await sub.read()
    sub.send(ack_packet(7, again.packet_id))  # PUBCOMP
    await pub.publish(topic, b"marker", qos=1)
    rest = await until(sub, b"marker")
    assert (present, again.kind, again.packet_id, rest) == (True, PUBREL, first.packet_id, [])


async def test_qos2_publisher_resending_before_pubrel_delivers_once(
    broker: LocalBroker, fleet: str, raw: RawClients
) -> None:
    topic, port = f"fl/{fleet}/q2", broker.port
    sub, _ = await raw.connect(port, f"{fleet}-sub")
    await sub.subscribe(topic, 2)
    pub, _ = await raw.connect(port, f"{fleet}-pub", clean=False)
    pub.send(publish_packet(topic, b"once", qos=2, packet_id=9))
    await pub.expect(5)  # PUBREC
    pub.abort()
    pub, _ = await raw.connect(port, f"{fleet}-pub", clean=False)
    await pub.publish(topic, b"once", qos=2, packet_id=9)  # resent, then released
    await pub.publish(topic, b"marker", qos=1, packet_id=10)
    assert [m.payload for m in await until(sub, b"marker")] == [b"once"]


@pytest.mark.parametrize("ending", ["abrupt", "keepalive", "disconnect"])
async def test_last_will(broker: LocalBroker, fleet: str, raw: RawClients, ending: str) -> None:
    """Published on an abrupt close and on keepalive expiry, not on a clean DISCONNECT."""
    status, port = f"fl/{fleet}/devices/d1/status", broker.port
    watcher, _ = await raw.connect(port, f"{fleet}-watcher")
    await watcher.subscribe(status, 1)
    will = (status, b"offline", 1, False)
    keepalive = 1 if ending == "keepalive" else 60
    device, _ = await raw.connect(port, f"{fleet}-d1", keepalive=keepalive, will=will)
    if ending == "disconnect":
        await device.disconnect()  # returns once the broker has closed the connection
        pub, _ = await raw.connect(port, f"{fleet}-pub")
        await pub.publish(status, b"marker", qos=1)
        assert await until(watcher, b"marker") == []
        return
    if ending == "abrupt":
        device.abort()
    # "keepalive": the device just stops sending, with its connection open.
    message = await receive(watcher, within=15)
    assert (message.topic, message.payload) == (status, b"offline")


async def test_keepalive(broker: LocalBroker, fleet: str, raw: RawClients) -> None:
    """PINGREQ gets PINGRESP; then 1.5 keepalives of silence close the connection."""
    device, _ = await raw.connect(broker.port, f"{fleet}-d1", keepalive=1)
    await device.ping()
    assert await device.closed(within=15)


async def test_keepalive_while_the_client_does_not_read(
    broker: LocalBroker, fleet: str, raw: RawClients
) -> None:
    """Keepalive 3, 30 MB the client never reads, one PINGREQ, then silence: dropped and
    its will out. The embedded broker once hung in drain() here and never dropped it."""
    port, status, big = broker.port, f"fl/{fleet}/status", f"fl/{fleet}/big"
    watcher, _ = await raw.connect(port, f"{fleet}-watcher")
    await watcher.subscribe(status, 1)
    will = (status, b"gone", 1, False)
    slow, _ = await raw.connect(port, f"{fleet}-slow", rcvbuf=4096, keepalive=3, will=will)
    await slow.subscribe(big, 0)
    pub, _ = await raw.connect(port, f"{fleet}-pub")
    for _ in range(30):
        pub.send(publish_packet(big, bytes(MB)))
        await pub.writer.drain()
    await pub.publish(f"fl/{fleet}/barrier", b"", qos=1)
    slow.send(bytes([0xC0, 0]))  # one PINGREQ, then silence
    loop = asyncio.get_running_loop()
    started = loop.time()
    message = await receive(watcher, within=25)
    assert (message.topic, message.payload) == (status, b"gone")
    assert loop.time() - started < 15  # Mosquitto 2.0.11: about 5 s; the embedded: 4.5 s


async def test_simultaneous_connects_with_one_id_leave_exactly_one(
    broker: LocalBroker, fleet: str, raw: RawClients
) -> None:
    """Two CONNECTs with an id in use, arriving together: the old connection and one of
    the two are closed, the survivor gets messages. The embedded broker once kept both
    (10 of 10 trials), one of them receiving nothing."""
    port = broker.port
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


@pytest.mark.parametrize(
    ("filters", "topic", "qos"),
    [
        ([("#", 0), ("+/status", 2), ("d1/status", 1)], "d1/status", 1),
        ([("d1/status", 1), ("+/status", 2), ("#", 0)], "d1/status", 1),
        ([("#", 2), ("d1/+", 1)], "d1/x", 1),
        ([("d1/#", 1), ("+/x", 2)], "d1/x", 1),
        ([("+/x", 2), ("d1/x", 0)], "d1/x", 0),
        ([("#", 0), ("+/x", 2)], "d1/x", 2),
        ([("d1/+", 0), ("d1/#", 2)], "d1/x", 0),
        ([("d1", 1), ("d1/#", 2)], "d1", 2),
    ],
)
async def test_overlapping_subscriptions(
    broker: LocalBroker,
    fleet: str,
    raw: RawClients,
    filters: list[tuple[str, int]],
    topic: str,
    qos: int,
) -> None:
    """One copy, at the QoS of the first matching filter in Mosquitto's tree order (exact
    level, then ``+``, then ``#``; ``a/#`` before ``a``), not the highest QoS: Mosquitto
    2.0 departs from §3.3.5-1 here, and the embedded broker does as Mosquitto does."""
    port, base = broker.port, f"fl/{fleet}"
    sub, _ = await raw.connect(port, f"{fleet}-sub")
    for i, (topic_filter, wanted) in enumerate([*filters, ("marker", 1)]):
        await sub.subscribe(f"{base}/{topic_filter}", wanted, packet_id=i + 1)
    pub, _ = await raw.connect(port, f"{fleet}-pub")
    await pub.publish(f"{base}/{topic}", b"s", qos=2)
    await pub.publish(f"{base}/marker", b"marker", qos=1, packet_id=2)
    seen = [(m.topic, m.qos) for m in await until(sub, b"marker")]
    assert seen == [(f"{base}/{topic}", qos)]


async def test_dollar_topics_are_not_matched_by_leading_wildcards(
    broker: LocalBroker, fleet: str, raw: RawClients
) -> None:
    port, dollar = broker.port, f"$fq-{fleet}/x"
    wild, _ = await raw.connect(port, f"{fleet}-wild")
    await wild.subscribe("+/x", 1)
    await wild.subscribe("#", 1, packet_id=2)  # last: every retained message follows
    exact, _ = await raw.connect(port, f"{fleet}-exact")
    await exact.subscribe(f"$fq-{fleet}/#", 1)
    pub, _ = await raw.connect(port, f"{fleet}-pub")
    await pub.publish(dollar, b"d", qos=1)
    await pub.publish(f"fl/{fleet}/marker", b"marker", qos=1, packet_id=2)
    leaked = [m.topic for m in await until(wild, b"marker") if m.topic.startswith("$")]
    got = await receive(exact)
    assert (leaked, got.topic, got.payload) == ([], dollar, b"d")


async def test_unsubscribe(broker: LocalBroker, fleet: str, raw: RawClients) -> None:
    port, topic, marker = broker.port, f"fl/{fleet}/a", f"fl/{fleet}/b"
    sub, _ = await raw.connect(port, f"{fleet}-sub")
    await sub.subscribe(topic, 1)
    await sub.subscribe(marker, 1, packet_id=2)
    pub, _ = await raw.connect(port, f"{fleet}-pub")
    await pub.publish(topic, b"before", qos=1)
    assert (await receive(sub)).payload == b"before"
    await sub.unsubscribe(topic)
    await pub.publish(topic, b"after", qos=1)
    await pub.publish(marker, b"marker", qos=1)
    assert [m.payload for m in await until(sub, b"marker")] == []


@pytest.mark.parametrize(("clean", "code"), [(True, 0), (False, 2)])
async def test_empty_client_id(
    broker: LocalBroker, raw: RawClients, clean: bool, code: int
) -> None:
    """Accepted with a clean session (the broker names it), refused without (§3.1.3-8)."""
    c = await raw.open(broker.port)
    c.send(connect_packet("", clean=clean))
    connack = await c.read()
    assert (connack.kind, connack.body[1]) == (2, code)
    if code:
        assert await c.closed()
    else:
        await c.ping()
