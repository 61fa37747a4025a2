"""A small MQTT 3.1.1 broker in asyncio, for one-machine runs where Mosquitto is absent.

It behaves as Mosquitto 2 does for what fedmq uses (tests/tools/broker/
test_same_behaviour.py runs the same cases against both): CONNECT with clean or
persistent sessions, last will and keepalive; PUBLISH at QoS 0, 1 and 2 both ways
(PUBACK; PUBREC/PUBREL/PUBCOMP, in-flight state kept by persistent sessions); retained
messages; SUBSCRIBE and UNSUBSCRIBE with ``+`` and ``#``; PINGREQ; DISCONNECT.
Not supported: authentication, TLS, MQTT 5, ``$SYS``, shared subscriptions,
persistence to disk. The pieces: :mod:`~tools.broker.mqtt_codec` (packets),
:mod:`~tools.broker.mqtt_session` (queues, in-flight state),
:mod:`~tools.broker.mqtt_connection` (writing); this module routes.
Section numbers (§) refer to the MQTT 3.1.1 specification (OASIS, 2014).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

from paho.mqtt.matcher import MQTTMatcher

from fedmq.aio import TaskGroup
from tools.broker.mqtt_codec import (
    CONNACK,
    CONNECT,
    DISCONNECT,
    MAX_PAYLOAD,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
    ConnectRequest,
    Fields,
    Message,
    ProtocolError,
    ack,
    packet,
    parse_connect,
    read_packet,
    topic_matches,
    valid_filter,
    valid_topic,
)
from tools.broker.mqtt_connection import Connection
from tools.broker.mqtt_session import DropLog, Limits, Session

__all__ = ["MqttServer"]

log = logging.getLogger(__name__)


class Subscriptions:
    """Which client subscribed to which filter at which QoS, indexed by paho's topic trie."""

    def __init__(self) -> None:
        self._trie = MQTTMatcher()  # filter -> (filter, {client id: QoS})

    def add(self, topic_filter: str, client_id: str, qos: int) -> None:
        try:
            self._trie[topic_filter][1][client_id] = qos
        except KeyError:
            self._trie[topic_filter] = (topic_filter, {client_id: qos})

    def remove(self, topic_filter: str, client_id: str) -> None:
        try:
            _, clients = self._trie[topic_filter]
        except KeyError:
            return
        clients.pop(client_id, None)
        if not clients:
            del self._trie[topic_filter]

    def match(self, topic: str) -> dict[str, int]:
        """Each subscribed client once, with the QoS of the filter Mosquitto 2 picks.

        Mosquitto 2.0 (checked on 2.0.11) sends a 3.1.1 client one copy, at the QoS of
        its first matching filter in trie order, not the highest that §3.3.5-1 asks for.
        """
        chosen: dict[str, int] = {}
        for _, clients in sorted(self._trie.iter_match(topic), key=_mosquitto_order):
            for client_id, qos in clients.items():
                chosen.setdefault(client_id, qos)
        return chosen


def _mosquitto_order(entry: tuple[str, dict[str, int]]) -> list[int]:
    """Mosquitto's walk of its subscription tree: at each level an exact name before
    ``+`` before ``#``, and a node's ``#`` child (``a/#``) before the node itself (``a``)."""
    levels = entry[0].split("/")
    key = [2 if level == "#" else 1 if level == "+" else 0 for level in levels]
    return key if levels[-1] == "#" else [*key, 3]


class MqttServer:
    """Serve MQTT 3.1.1 on ``host:port`` (0 picks a free port) until cancelled."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_payload: int = MAX_PAYLOAD,
        limits: Limits | None = None,
        connect_timeout: float = 10.0,
        drop_log_interval: float = 60.0,
    ):
        self.host, self.port = host, port
        self.max_packet = max_payload + 65_536 + 4  # room for the topic and packet id
        self.limits = limits or Limits()
        self.connect_timeout = connect_timeout
        self.drops = DropLog(drop_log_interval)
        self._sessions: dict[str, Session] = {}
        self._subscriptions = Subscriptions()
        self._retained: dict[str, Message] = {}
        self._connections: dict[str, Connection] = {}

    async def serve(self, ready: Callable[[int], object] | None = None) -> None:
        """Listen, call ``ready(port)``, and serve until this task is cancelled."""
        try:
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
        finally:
            self.drops.flush()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = Connection(reader, writer)
        will: Message | None = None
        graceful = False
        try:
            kind, _, body = await asyncio.wait_for(
                read_packet(reader, self.max_packet), self.connect_timeout
            )
            if kind != CONNECT:
                raise ProtocolError("the first packet must be CONNECT")  # §3.1.0-1
            request = parse_connect(Fields(body))
            if isinstance(request, int):
                writer.write(packet(CONNACK << 4, bytes([0, request])))
                graceful = True
                return
            await self._attach(conn, request)
            will = request.will
            graceful = await self._read_loop(conn, request.keepalive)
            if graceful:
                will = None  # §3.14.4: a clean disconnect discards the will
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
            pass  # the network connection is gone; the will below says so
        except ProtocolError as exc:
            log.warning("closing %s: %s", conn.client_id, exc)
        except Exception:  # one client's trouble must not end the broker's task group
            log.exception("closing %s after an error", conn.client_id)
        finally:
            conn.finish(graceful)
            self._detach(conn)
            if will is not None:
                self._publish(will)  # §3.1.2.5: closed without DISCONNECT
            conn.finished.set()

    async def _read_loop(self, conn: Connection, keepalive: int) -> bool:
        """Handle packets until DISCONNECT (True); raises when the connection is lost."""
        conn.start(keepalive)
        while True:
            kind, flags, body = await read_packet(conn.reader, self.max_packet)
            conn.heard()
            if kind == DISCONNECT:
                return True
            self._handle(conn, kind, flags, Fields(body))
            await conn.room()

    async def _attach(self, conn: Connection, request: ConnectRequest) -> None:
        """§3.1.4-2: a connection with a client id in use closes the older one, which
        publishes its will first; exactly one connection per id survives."""
        client_id = request.client_id or f"auto-{uuid.uuid4().hex}"
        previous = self._connections.get(client_id)
        self._connections[client_id] = conn  # claimed before any await: no race
        if previous is not None:
            previous.close()
            await previous.finished.wait()
        if self._connections.get(client_id) is not conn:
            raise ConnectionError("taken over by a newer connection")
        session = self._sessions.get(client_id)
        present = session is not None and not request.clean and not session.clean
        if not present:
            if session is not None:
                self._end_session(session)
            session = Session(client_id, request.clean, self.limits, self.drops)
            self._sessions[client_id] = session
        assert session is not None
        conn.session, session.link = session, conn
        conn.send(packet(CONNACK << 4, bytes([present, 0])))
        for resend in session.resume():
            conn.send(resend)
        log.debug("%s connected (clean=%s)", client_id, request.clean)

    def _handle(self, conn: Connection, kind: int, flags: int, fields: Fields) -> None:
        session = conn.session
        assert session is not None
        if kind == PUBLISH:
            self._on_publish(conn, session, flags, fields)
        elif kind in (PUBACK, PUBREC, PUBCOMP):
            reply = session.acknowledged(kind, fields.uint16())
            if reply is not None:
                conn.send(reply)
        elif kind == PUBREL:
            if flags != 0b0010:
                raise ProtocolError("PUBREL flags must be 0010")  # §3.6.1-1
            packet_id = fields.uint16()
            message = session.incoming.pop(packet_id, None)
            if message is not None:
                self._publish(message)  # §4.3.3: QoS 2 goes on at release, exactly once
            conn.send(ack(PUBCOMP, packet_id))
        elif kind in (SUBSCRIBE, UNSUBSCRIBE):
            if flags != 0b0010:
                raise ProtocolError("SUBSCRIBE/UNSUBSCRIBE flags must be 0010")  # §3.8.1-1
            packet_id = fields.uint16()
            if kind == SUBSCRIBE:
                self._on_subscribe(conn, session, packet_id, fields)
            else:
                while not fields.done:
                    topic_filter = fields.string()
                    session.subscriptions.pop(topic_filter, None)
                    self._subscriptions.remove(topic_filter, session.client_id)
                conn.send(ack(UNSUBACK, packet_id))
        elif kind == PINGREQ:
            conn.send(packet(PINGRESP << 4))
        else:
            raise ProtocolError(f"unexpected packet type {kind}")

    def _on_publish(self, conn: Connection, session: Session, flags: int, fields: Fields) -> None:
        qos, retain = (flags >> 1) & 0x03, bool(flags & 0x01)
        if qos == 3:
            raise ProtocolError("PUBLISH with QoS 3")  # §3.3.1-4
        topic = fields.string()
        if not valid_topic(topic):
            raise ProtocolError(f"invalid topic name {topic!r}")
        packet_id = fields.uint16() if qos else 0
        message = Message(topic, fields.rest(), qos, retain)
        if qos == 2:
            # Stored until PUBREL; a resent PUBLISH with the same id is not a new message.
            if packet_id not in session.incoming:
                if len(session.incoming) >= self.limits.max_queued:
                    raise ProtocolError("too many QoS 2 messages without PUBREL")
                session.incoming[packet_id] = message
            conn.send(ack(PUBREC, packet_id))
            return
        self._publish(message)
        if qos == 1:
            conn.send(ack(PUBACK, packet_id))

    def _on_subscribe(
        self, conn: Connection, session: Session, packet_id: int, fields: Fields
    ) -> None:
        granted: list[tuple[str, int]] = []
        codes = bytearray()
        while not fields.done:
            topic_filter, qos = fields.string(), fields.byte()
            if qos > 2:
                raise ProtocolError("requested QoS above 2")  # §3.8.3-4
            if valid_filter(topic_filter):
                session.subscriptions[topic_filter] = qos
                self._subscriptions.add(topic_filter, session.client_id, qos)
                granted.append((topic_filter, qos))
                codes.append(qos)
            else:
                codes.append(0x80)
        if not codes:
            raise ProtocolError("SUBSCRIBE without a topic filter")  # §3.8.3-3
        conn.send(packet(SUBACK << 4, packet_id.to_bytes(2, "big") + codes))
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
        for client_id, qos in self._subscriptions.match(message.topic).items():
            session = self._sessions.get(client_id)
            if session is not None:
                copy = Message(message.topic, message.payload, min(qos, message.qos))
                session.deliver(copy)

    def _detach(self, conn: Connection) -> None:
        session = conn.session
        if session is None:
            return
        if session.link is conn:
            session.link = None
            session.discard_queues()
        if self._connections.get(session.client_id) is conn:
            del self._connections[session.client_id]
            if session.clean and self._sessions.get(session.client_id) is session:
                self._end_session(session)  # §3.1.2-6: clean sessions end here

    def _end_session(self, session: Session) -> None:
        for topic_filter in session.subscriptions:
            self._subscriptions.remove(topic_filter, session.client_id)
        if self._sessions.get(session.client_id) is session:
            del self._sessions[session.client_id]
