"""A small MQTT 3.1.1 broker in asyncio, for one-machine runs where Mosquitto is absent.

It implements what fedmq uses and no more: CONNECT with clean or persistent sessions,
last will and keepalive; PUBLISH at QoS 0 and 1 both ways with PUBACK; retained
messages; SUBSCRIBE and UNSUBSCRIBE with ``+`` and ``#``; PINGREQ; DISCONNECT.
Not supported: QoS 2 (subscriptions are granted QoS 1 at most, and a QoS 2 PUBLISH
closes the connection), authentication, TLS, MQTT 5, ``$SYS``, persistence to disk.
Section numbers (§) refer to the MQTT 3.1.1 specification (OASIS, 2014).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from fedmq.aio import TaskGroup

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14
MAX_PAYLOAD = 16 * 1024 * 1024  # as message_size_limit in broker_config/dev.conf


class ProtocolError(Exception):
    """Raised when a client breaks the protocol; the server closes its connection (§4.8)."""


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool = False


def topic_matches(topic_filter: str, topic: str) -> bool:
    """True when ``topic`` matches ``topic_filter`` (§4.7); ``a/#`` also matches ``a``."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False  # §4.7.2: wildcards at the first level skip $-topics
    levels, names = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(levels):
        if level == "#":
            return True
        if i >= len(names) or level not in ("+", names[i]):
            return False
    return len(levels) == len(names)


def valid_topic(topic: str) -> bool:
    """A topic name to publish to: not empty, no wildcards (§4.7.3, §3.3.2-2)."""
    return bool(topic) and not any(c in topic for c in "+#\0")


def valid_filter(topic_filter: str) -> bool:
    """``#`` only as the whole last level, ``+`` only as a whole level (§4.7.1)."""
    if not topic_filter or "\0" in topic_filter:
        return False
    levels = topic_filter.split("/")
    return all(
        ("#" not in level or (level == "#" and i == len(levels) - 1))
        and ("+" not in level or level == "+")
        for i, level in enumerate(levels)
    )


def _varint(n: int) -> bytes:
    """The remaining-length encoding (§2.2.3): 7 bits a byte, high bit = more follow."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes = b"") -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def _string(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def _publish_packet(message: Message, packet_id: int | None, dup: bool = False) -> bytes:
    flags = (dup << 3) | (message.qos << 1) | message.retain
    pid = packet_id.to_bytes(2, "big") if packet_id is not None else b""
    return _packet(PUBLISH << 4 | flags, _string(message.topic.encode()) + pid + message.payload)


class _Fields:
    """Reads the fields of one packet body in order; too short means a malformed packet."""

    def __init__(self, body: bytes):
        self.body, self.pos = body, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.body):
            raise ProtocolError("packet shorter than its fields")
        self.pos += n
        return self.body[self.pos - n : self.pos]

    def byte(self) -> int:
        return self.take(1)[0]

    def uint16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def binary(self) -> bytes:
        return self.take(self.uint16())

    def string(self) -> str:
        try:
            return self.binary().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("a string is not UTF-8") from exc

    def rest(self) -> bytes:
        return self.take(len(self.body) - self.pos)

    @property
    def done(self) -> bool:
        return self.pos == len(self.body)


@dataclass
class _Session:
    """What the server keeps for one client id (§3.1.2.4); outlives connections if not clean."""

    client_id: str
    clean: bool
    max_inflight: int
    max_queued: int
    subscriptions: dict[str, int] = field(default_factory=dict)
    inflight: dict[int, Message] = field(default_factory=dict)  # sent, not yet acknowledged
    pending: deque[Message] = field(default_factory=deque)  # QoS 1 waiting for a free slot
    writer: asyncio.StreamWriter | None = None
    last_id: int = 0

    def deliver(self, message: Message) -> None:
        if message.qos == 0:
            if self.writer is not None:
                self.writer.write(_publish_packet(message, None))
        elif len(self.pending) < self.max_queued:
            self.pending.append(message)
            self.flush()
        else:
            log.warning("queue of %s full; dropped a message on %s", self.client_id, message.topic)

    def flush(self) -> None:
        """Send queued QoS 1 messages while the in-flight window has room."""
        while self.writer is not None and self.pending and len(self.inflight) < self.max_inflight:
            message = self.pending.popleft()
            packet_id = self._next_id()
            self.inflight[packet_id] = message
            self.writer.write(_publish_packet(message, packet_id))

    def resume(self, writer: asyncio.StreamWriter) -> None:
        """Attach a new connection: resend unacknowledged messages with DUP set (§4.4)."""
        self.writer = writer
        for packet_id, message in self.inflight.items():
            writer.write(_publish_packet(message, packet_id, dup=True))
        self.flush()

    def _next_id(self) -> int:
        while True:
            self.last_id = self.last_id % 65535 + 1
            if self.last_id not in self.inflight:
                return self.last_id


class MqttServer:
    """Serve MQTT 3.1.1 on ``host:port`` (0 picks a free port) until cancelled."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_payload: int = MAX_PAYLOAD,
        max_inflight: int = 100,
        max_queued: int = 10_000,
        connect_timeout: float = 10.0,
    ):
        self.host, self.port = host, port
        self.max_packet = max_payload + 65_536 + 4  # room for the topic and packet id
        self.max_inflight, self.max_queued = max_inflight, max_queued
        self.connect_timeout = connect_timeout
        self._sessions: dict[str, _Session] = {}
        self._retained: dict[str, Message] = {}
        self._connections: dict[str, asyncio.Task[None]] = {}

    async def serve(self, ready: Callable[[int], object] | None = None) -> None:
        """Listen, call ``ready(port)``, and serve until this task is cancelled."""
        async with TaskGroup() as tg:

            def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                try:
                    tg.create_task(self._serve_client(reader, writer))
                except RuntimeError:  # the task group is shutting down
                    writer.close()

            server = await asyncio.start_server(accept, self.host, self.port)
            async with server:
                self.port = server.sockets[0].getsockname()[1]
                log.info("MQTT broker listening on %s:%d", self.host, self.port)
                if ready is not None:
                    ready(self.port)
                await server.serve_forever()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        session: _Session | None = None
        will: Message | None = None
        try:
            kind, _, body = await asyncio.wait_for(self._read(reader), self.connect_timeout)
            if kind != CONNECT:
                raise ProtocolError("the first packet must be CONNECT")  # §3.1.0-1
            session, will, keepalive = await self._connect(_Fields(body), writer)
            if session is None:
                return
            while True:
                # §3.1.2.10: no packet within 1.5 keepalive periods means the client is gone.
                timeout = keepalive * 1.5 if keepalive else None
                kind, flags, body = await asyncio.wait_for(self._read(reader), timeout)
                if kind == DISCONNECT:
                    will = None  # §3.14.4: a clean disconnect discards the will
                    return
                self._handle(session, kind, flags, _Fields(body), writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
            pass  # the network connection is gone; the will below says so
        except ProtocolError as exc:
            log.warning("closing %s: %s", session.client_id if session else "a client", exc)
        except Exception:  # one client's trouble must not end the broker's task group
            log.exception("closing %s after an error", session.client_id if session else "a client")
        finally:
            writer.close()
            if session is not None:
                self._detach(session, writer)
            if will is not None:
                self._publish(will)  # §3.1.2.5: closed without DISCONNECT

    async def _connect(
        self, fields: _Fields, writer: asyncio.StreamWriter
    ) -> tuple[_Session | None, Message | None, int]:
        if (fields.string(), fields.byte()) != ("MQTT", 4):
            writer.write(_packet(CONNACK << 4, b"\x00\x01"))  # unacceptable protocol version
            return None, None, 0
        flags, keepalive, client_id = fields.byte(), fields.uint16(), fields.string()
        clean = bool(flags & 0x02)
        if flags & 0x01:
            raise ProtocolError("reserved CONNECT flag set")  # §3.1.2-3
        will = None
        if flags & 0x04:
            topic, payload = fields.string(), fields.binary()
            if not valid_topic(topic):
                raise ProtocolError(f"invalid will topic {topic!r}")
            qos = min((flags >> 3) & 0x03, 1)  # QoS 2 wills are published at QoS 1
            will = Message(topic, payload, qos, retain=bool(flags & 0x20))
        for present in (flags & 0x80, flags & 0x40):  # username, password: accepted unread
            if present:
                fields.binary()
        if not client_id:
            if not clean:
                writer.write(_packet(CONNACK << 4, b"\x00\x02"))  # identifier rejected
                return None, None, 0
            client_id = f"auto-{uuid.uuid4().hex}"
        await self._take_over(client_id)
        session = self._sessions.get(client_id)
        present = session is not None and not clean
        if session is None or clean:
            session = _Session(client_id, clean, self.max_inflight, self.max_queued)
            self._sessions[client_id] = session
        task = asyncio.current_task()
        assert task is not None
        self._connections[client_id] = task
        writer.write(_packet(CONNACK << 4, bytes([present, 0])))
        session.resume(writer)
        log.debug("%s connected (clean=%s, keepalive=%d)", client_id, clean, keepalive)
        return session, will, keepalive

    async def _take_over(self, client_id: str) -> None:
        """§3.1.4-2: a second connection with the same id disconnects the first."""
        previous = self._connections.get(client_id)
        if previous is not None and previous is not asyncio.current_task():
            previous.cancel()
            await asyncio.wait([previous])  # its will is out before the newcomer starts

    def _handle(
        self,
        session: _Session,
        kind: int,
        flags: int,
        fields: _Fields,
        writer: asyncio.StreamWriter,
    ) -> None:
        if kind == PUBLISH:
            self._on_publish(flags, fields, writer)
        elif kind == PUBACK:
            session.inflight.pop(fields.uint16(), None)
            session.flush()
        elif kind in (SUBSCRIBE, UNSUBSCRIBE):
            if flags != 0b0010:
                raise ProtocolError("SUBSCRIBE/UNSUBSCRIBE flags must be 0010")  # §3.8.1-1
            packet_id = fields.uint16()
            if kind == SUBSCRIBE:
                self._on_subscribe(session, packet_id, fields, writer)
            else:
                while not fields.done:
                    session.subscriptions.pop(fields.string(), None)
                writer.write(_packet(UNSUBACK << 4, packet_id.to_bytes(2, "big")))
        elif kind == PINGREQ:
            writer.write(_packet(PINGRESP << 4))
        else:
            raise ProtocolError(f"unexpected packet type {kind}")

    def _on_publish(self, flags: int, fields: _Fields, writer: asyncio.StreamWriter) -> None:
        qos, retain = (flags >> 1) & 0x03, bool(flags & 0x01)
        if qos > 1:
            raise ProtocolError("QoS 2 is not supported by this broker")
        topic = fields.string()
        if not valid_topic(topic):
            raise ProtocolError(f"invalid topic name {topic!r}")
        packet_id = fields.uint16() if qos else None
        self._publish(Message(topic, fields.rest(), qos, retain))
        if packet_id is not None:
            writer.write(_packet(PUBACK << 4, packet_id.to_bytes(2, "big")))

    def _on_subscribe(
        self, session: _Session, packet_id: int, fields: _Fields, writer: asyncio.StreamWriter
    ) -> None:
        granted: list[tuple[str, int]] = []
        codes = bytearray()
        while not fields.done:
            topic_filter, qos = fields.string(), fields.byte()
            if qos > 2:
                raise ProtocolError("requested QoS above 2")  # §3.8.3-4
            if valid_filter(topic_filter):
                session.subscriptions[topic_filter] = min(qos, 1)
                granted.append((topic_filter, min(qos, 1)))
                codes.append(min(qos, 1))
            else:
                codes.append(0x80)
        if not codes:
            raise ProtocolError("SUBSCRIBE without a topic filter")  # §3.8.3-3
        writer.write(_packet(SUBACK << 4, packet_id.to_bytes(2, "big") + codes))
        for topic_filter, qos in granted:  # §3.3.1-6: retained messages, RETAIN set
            for message in list(self._retained.values()):
                if topic_matches(topic_filter, message.topic):
                    copy = Message(message.topic, message.payload, min(qos, message.qos), True)
                    session.deliver(copy)

    def _publish(self, message: Message) -> None:
        """Retain (§3.3.1.3: an empty payload clears) and forward to every matching session."""
        if message.retain:
            if message.payload:
                self._retained[message.topic] = message
            else:
                self._retained.pop(message.topic, None)
        for session in list(self._sessions.values()):
            matching = [
                q for f, q in session.subscriptions.items() if topic_matches(f, message.topic)
            ]
            if matching:  # one copy at the highest QoS of overlapping filters (§3.3.5-1)
                qos = min(max(matching), message.qos)
                session.deliver(Message(message.topic, message.payload, qos, retain=False))

    def _detach(self, session: _Session, writer: asyncio.StreamWriter) -> None:
        if session.writer is writer:
            session.writer = None
            if self._connections.get(session.client_id) is asyncio.current_task():
                del self._connections[session.client_id]
            if session.clean and self._sessions.get(session.client_id) is session:
                del self._sessions[session.client_id]  # §3.1.2-6: clean sessions end here

    async def _read(self, reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
        """One packet: (type, flags, body)."""
        first = (await reader.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise ProtocolError("malformed remaining length")  # §2.2.3: 4 bytes at most
        if length > self.max_packet:
            raise ProtocolError(f"packet of {length} bytes is over the {self.max_packet} limit")
        return first >> 4, first & 0x0F, await reader.readexactly(length)
