"""MQTT 3.1.1 packets for fedmq's own broker: framing, fields, and topic rules.

Section numbers (§) refer to the MQTT 3.1.1 specification (OASIS, 2014).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from paho.mqtt.client import topic_matches_sub

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
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
    """True when ``topic`` matches ``topic_filter`` (§4.7): paho's matcher, which also
    lets ``a/#`` match ``a`` and keeps wildcards at the first level off ``$``-topics."""
    return topic_matches_sub(topic_filter, topic)


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


def varint(n: int) -> bytes:
    """The remaining-length encoding (§2.2.3): 7 bits a byte, high bit = more follow."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first: int, body: bytes = b"") -> bytes:
    return bytes([first]) + varint(len(body)) + body


def string(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def ack(kind: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL (flags 0010, §3.6.1), PUBCOMP or UNSUBACK for ``packet_id``."""
    flags = 0b0010 if kind == PUBREL else 0
    return packet(kind << 4 | flags, packet_id.to_bytes(2, "big"))


def publish_packet(message: Message, packet_id: int | None, dup: bool = False) -> bytes:
    flags = (dup << 3) | (message.qos << 1) | message.retain
    pid = packet_id.to_bytes(2, "big") if packet_id is not None else b""
    return packet(PUBLISH << 4 | flags, string(message.topic.encode()) + pid + message.payload)


class Fields:
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


async def read_packet(reader: asyncio.StreamReader, max_packet: int) -> tuple[int, int, bytes]:
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
    if length > max_packet:
        raise ProtocolError(f"packet of {length} bytes is over the {max_packet} limit")
    return first >> 4, first & 0x0F, await reader.readexactly(length)


@dataclass(frozen=True)
class ConnectRequest:
    client_id: str  # empty: the server assigns one (§3.1.3-6)
    clean: bool
    keepalive: int
    will: Message | None


def parse_connect(fields: Fields) -> ConnectRequest | int:
    """The CONNECT body (§3.1), or the CONNACK return code that refuses it."""
    if (fields.string(), fields.byte()) != ("MQTT", 4):
        return 1  # unacceptable protocol version
    flags, keepalive, client_id = fields.byte(), fields.uint16(), fields.string()
    if flags & 0x01:
        raise ProtocolError("reserved CONNECT flag set")  # §3.1.2-3
    will = None
    if flags & 0x04:
        topic, payload, qos = fields.string(), fields.binary(), (flags >> 3) & 0x03
        if not valid_topic(topic) or qos > 2:
            raise ProtocolError(f"invalid will (topic {topic!r}, QoS {qos})")
        will = Message(topic, payload, qos, retain=bool(flags & 0x20))
    for present in (flags & 0x80, flags & 0x40):  # username, password: accepted unread
        if present:
            fields.binary()
    clean = bool(flags & 0x02)
    if not client_id and not clean:
        return 2  # identifier rejected (§3.1.3-8)
    return ConnectRequest(client_id, clean, keepalive, will)
