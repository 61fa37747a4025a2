"""The brokers from tools/broker/, exercised for real with aiomqtt clients.

Each async scenario runs under ``asyncio.run`` with one overall time bound, and waits on
messages, never on sleeps. Topics are ``fl/{fleet}/...`` with the test's own fleet.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import pytest
from rawmqtt import connect_packet

from fedmq.aio import TaskGroup
from fedmq.errors import BrokerError, ConfigError
from tools.broker import (
    DEV_CONF,
    LOOPBACK,
    EmbeddedBroker,
    LocalBroker,
    MosquittoBroker,
    accepting,
    choose_broker,
    render_config,
)

pytestmark = pytest.mark.broker

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[3]
SCENARIO_TIMEOUT = 20.0
RETAINED_WITHIN = 1.0


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    """Run one async scenario to completion, bounded so a lost message fails, not hangs."""

    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), SCENARIO_TIMEOUT)

    return asyncio.run(bounded())


def client(broker: LocalBroker, fleet: str, name: str, **options: Any) -> aiomqtt.Client:
    return aiomqtt.Client(LOOPBACK, broker.port, identifier=f"{fleet}-{name}", **options)


async def next_message(c: aiomqtt.Client, within: float | None = None) -> aiomqtt.Message:
    return await asyncio.wait_for(anext(c.messages), within)


async def raw_connect(
    port: int, client_id: str, will_topic: str, will: bytes, keepalive: int = 60
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect with a retained QoS 1 last will, by an MQTT 3.1.1 CONNECT written by hand.

    A raw stream lets a test break the connection the way a failing device does. Killing
    an aiomqtt client instead (closing ``client._client.socket()``, paho's socket) leaves
    the event loop watching a closed descriptor ("Invalid file descriptor: -1") and
    aiomqtt holding an exception nobody retrieves.
    """
    packet = connect_packet(client_id, keepalive=keepalive, will=(will_topic, will, 1, True))
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    writer.write(packet)
    assert await reader.readexactly(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
    return reader, writer


def vanish(writer: asyncio.StreamWriter) -> None:
    """Reset the connection, as a device losing power: no DISCONNECT, the socket just dies.

    SO_LINGER 0 makes close() send a TCP reset, as the device's next packet would get.
    """
    writer.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )
    writer.transport.abort()


def test_qos1_round_trip(broker: LocalBroker, fleet: str) -> None:
    async def scenario() -> aiomqtt.Message:
        async with client(broker, fleet, "agg") as agg, client(broker, fleet, "dev") as dev:
            await agg.subscribe(f"fl/{fleet}/updates/+", qos=1)
            await dev.publish(f"fl/{fleet}/updates/dev1", b"delta", qos=1)
            return await next_message(agg)

    message = run(scenario)
    assert (message.topic.value, message.payload, message.qos) == (
        f"fl/{fleet}/updates/dev1",
        b"delta",
        1,
    )


def test_retained_message_reaches_a_late_subscriber(broker: LocalBroker, fleet: str) -> None:
    topic = f"fl/{fleet}/model/global"

    async def scenario() -> aiomqtt.Message:
        async with client(broker, fleet, "agg") as agg:
            await agg.publish(topic, b"v1", qos=1, retain=True)
        async with client(broker, fleet, "late") as late:
            await late.subscribe(topic, qos=1)
            return await next_message(late, within=RETAINED_WITHIN)

    message = run(scenario)
    assert (message.topic.value, message.payload, message.retain) == (topic, b"v1", True)


def test_no_retained_message_from_topics_not_subscribed(broker: LocalBroker, fleet: str) -> None:
    """The amqtt 0.12.1 bug: a connecting client got retained messages matching any
    *other* client's subscriptions. A marker published after subscribing must come first."""
    other, mine = f"fl/{fleet}/model/global", f"fl/{fleet}/devices/d1/status"

    async def scenario() -> aiomqtt.Message:
        async with client(broker, fleet, "watcher") as watcher:
            await watcher.subscribe(other, qos=1)  # keeps a subscription to `other` alive
            await watcher.publish(other, b"model", qos=1, retain=True)
            await next_message(watcher)
            async with client(broker, fleet, "device") as device:
                await device.subscribe(mine, qos=1)
                await device.publish(mine, b"marker", qos=1)
                return await next_message(device)

    message = run(scenario)
    assert (message.topic.value, message.payload) == (mine, b"marker")


def test_last_will_is_published_when_a_client_vanishes(broker: LocalBroker, fleet: str) -> None:
    status = f"fl/{fleet}/devices/d1/status"

    async def scenario() -> tuple[aiomqtt.Message, aiomqtt.Message]:
        async with client(broker, fleet, "agg") as agg:
            await agg.subscribe(f"fl/{fleet}/devices/+/status", qos=1)
            _, writer = await raw_connect(broker.port, f"{fleet}-d1", status, b"offline")
            vanish(writer)
            live = await next_message(agg)
        async with client(broker, fleet, "late") as late:
            await late.subscribe(status, qos=1)
            return live, await next_message(late, within=RETAINED_WITHIN)

    live, retained = run(scenario)
    assert (live.topic.value, live.payload) == (status, b"offline")
    assert (retained.payload, retained.retain) == (b"offline", True)


def test_last_will_is_published_when_keepalive_expires(broker: LocalBroker, fleet: str) -> None:
    """A device that hangs with its TCP connection open: silent for 1.5 keepalives.

    About 1.5 s on the embedded broker; 5-6 s on Mosquitto 2.0, which checks keepalives
    only every few seconds.
    """
    status = f"fl/{fleet}/devices/d1/status"

    async def scenario() -> aiomqtt.Message:
        async with client(broker, fleet, "agg") as agg:
            await agg.subscribe(status, qos=1)
            _, writer = await raw_connect(broker.port, f"{fleet}-d1", status, b"gone", keepalive=1)
            try:
                return await next_message(agg)
            finally:
                writer.close()

    assert run(scenario).payload == b"gone"


def test_a_second_connection_with_the_same_id_takes_over(broker: LocalBroker, fleet: str) -> None:
    """The broker closes the first connection, and (like Mosquitto) publishes its will."""
    status = f"fl/{fleet}/devices/d1/status"

    async def scenario() -> tuple[bytes, aiomqtt.Message]:
        async with client(broker, fleet, "agg") as agg:
            await agg.subscribe(status, qos=1)
            reader, writer = await raw_connect(broker.port, f"{fleet}-d1", status, b"offline")
            try:
                async with client(broker, fleet, "d1"):
                    return await reader.read(), await next_message(agg)
            finally:
                writer.close()

    rest, will = run(scenario)
    assert rest == b""  # the first connection was closed
    assert will.payload == b"offline"


def test_persistent_session_gets_what_was_sent_while_offline(
    broker: LocalBroker, fleet: str
) -> None:
    """What the aggregator relies on across its restarts: clean_session=False, QoS 1."""
    topic = f"fl/{fleet}/updates/dev1"

    async def scenario() -> aiomqtt.Message:
        async with client(broker, fleet, "agg", clean_session=False) as agg:
            await agg.subscribe(f"fl/{fleet}/updates/+", qos=1)
        async with client(broker, fleet, "dev") as dev:
            await dev.publish(topic, b"while-away", qos=1)
        async with client(broker, fleet, "agg", clean_session=False) as agg:
            return await next_message(agg)

    message = run(scenario)
    assert (message.topic.value, message.payload, message.retain) == (topic, b"while-away", False)


@pytest.mark.parametrize("size", [100_000, 1024 * 1024, 4 * 1024 * 1024])
def test_large_payload(broker: LocalBroker, fleet: str, size: int) -> None:
    payload = bytes(range(256)) * (size // 256)

    async def scenario() -> aiomqtt.Message:
        async with client(broker, fleet, "agg") as agg, client(broker, fleet, "dev") as dev:
            await agg.subscribe(f"fl/{fleet}/model/onnx", qos=1)
            await dev.publish(f"fl/{fleet}/model/onnx", payload, qos=1)
            return await next_message(agg)

    assert run(scenario).payload == payload


def test_thirty_devices_at_once(broker: LocalBroker, fleet: str) -> None:
    devices, each = 30, 3

    async def device(i: int) -> None:
        async with client(broker, fleet, f"dev{i}") as dev:
            for seq in range(each):
                await dev.publish(f"fl/{fleet}/updates/dev{i}", f"{i}:{seq}".encode(), qos=1)

    async def scenario() -> set[bytes]:
        async with client(broker, fleet, "agg") as agg:
            await agg.subscribe(f"fl/{fleet}/updates/+", qos=1)
            async with TaskGroup() as tg:
                for i in range(devices):
                    tg.create_task(device(i))
            return {(await next_message(agg)).payload for _ in range(devices * each)}

    assert run(scenario) == {f"{i}:{s}".encode() for i in range(devices) for s in range(each)}


def test_mosquitto_restart_keeps_retained_messages(mosquitto: MosquittoBroker, fleet: str) -> None:
    topic = f"fl/{fleet}/model/global"

    async def publish() -> None:
        async with client(mosquitto, fleet, "agg") as agg:
            await agg.publish(topic, b"v7", qos=1, retain=True)

    async def read_back() -> aiomqtt.Message:
        async with client(mosquitto, fleet, "late") as late:
            await late.subscribe(topic, qos=1)
            return await next_message(late, within=RETAINED_WITHIN)

    run(publish)
    url, pid = mosquitto.url, mosquitto.pid
    mosquitto.restart()
    assert mosquitto.url == url and mosquitto.pid != pid
    assert run(read_back).payload == b"v7"


def test_missing_mosquitto_binary_is_a_broker_error(tmp_path: Path) -> None:
    with pytest.raises(BrokerError) as caught:
        MosquittoBroker(binary=tmp_path / "no-such-mosquitto").start()
    assert caught.value.reason == "no_mosquitto"


def test_mosquitto_exiting_early_reports_its_log(
    new_broker: Callable[..., LocalBroker], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text(DEV_CONF.read_text() + "no_such_option 1\n")
    broker = new_broker("mosquitto", config=bad)
    with pytest.raises(BrokerError) as caught:
        broker.start()
    assert caught.value.reason == "broker_exited"
    assert "no_such_option" in str(caught.value)


@pytest.mark.parametrize("kind", ["mosquitto", "embedded"])
def test_async_context_manager_starts_and_stops(
    new_broker: Callable[..., LocalBroker], fleet: str, kind: str
) -> None:
    broker = new_broker(kind)

    async def scenario() -> bytes:
        async with broker as b:
            assert b.url == f"mqtt://{LOOPBACK}:{b.port}"
            async with client(b, fleet, "c") as c:
                await c.subscribe(f"fl/{fleet}/x")
                await c.publish(f"fl/{fleet}/x", b"hi")
                return (await next_message(c)).payload

    assert run(scenario) == b"hi"
    assert not broker.running
    assert not accepting(broker.port)


@pytest.mark.parametrize("kind", ["mosquitto", "embedded"])
def test_cancelled_async_enter_leaves_no_broker_running(
    new_broker: Callable[..., LocalBroker], kind: str
) -> None:
    broker = new_broker(kind)

    async def scenario() -> None:
        entering = asyncio.ensure_future(broker.__aenter__())
        await asyncio.sleep(0)  # let it reach the worker thread, then cancel mid-start
        entering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await entering

    run(scenario)
    assert not broker.running


SERVE = """
import sys
from tools.broker import choose_broker
broker = choose_broker(sys.argv[1])
try:
    broker.serve_forever(on_ready=lambda b: print(b.port, flush=True))
except KeyboardInterrupt:
    print("stopped" if not broker.running else "STILL RUNNING", flush=True)
"""


@pytest.mark.parametrize("kind", ["mosquitto", "embedded"])
def test_serve_forever_stops_its_broker_on_sigterm(
    new_broker: Callable[..., LocalBroker], kind: str
) -> None:
    new_broker(kind)  # skips (or under CI fails) the test when Mosquitto is missing
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, kind], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        assert accepting(port)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    finally:
        proc.kill()
        proc.wait()
    assert out.strip() == "stopped"
    assert not accepting(port)


def test_auto_falls_back_to_embedded_without_mosquitto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tools.broker.find_mosquitto", lambda: None)
    assert isinstance(choose_broker("auto"), EmbeddedBroker)


def test_render_config_sets_port_and_persistence(tmp_path: Path) -> None:
    conf = render_config(DEV_CONF.read_text(), port=4321, persistence_dir=tmp_path)
    assert "listener 4321 127.0.0.1\n" in conf
    assert f"persistence_location {tmp_path}/\n" in conf


def test_render_config_rejects_a_template_without_a_listener(tmp_path: Path) -> None:
    template = re.sub(r"(?m)^listener .*$", "", DEV_CONF.read_text())
    with pytest.raises(ConfigError, match="listener"):
        render_config(template, port=1, persistence_dir=tmp_path)


@pytest.mark.parametrize("case", ["plain", "Odd chars: /+#[]", "x" * 100])
def test_fleet_names_are_safe(fleet: str, case: str) -> None:
    assert re.fullmatch(r"[a-z0-9_-]{1,64}", fleet)
    assert fleet.startswith("test_fleet_names_are_safe-")
