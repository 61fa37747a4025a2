"""A raw MQTT 3.1.1 client for broker tests: every packet written and read by hand.

For what a library client hides or refuses to do: not reading, not acknowledging,
vanishing mid-flow, sending two CONNECTs at once. Not a fixture module: tests import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass

LOOPBACK = "127.0.0.1"
WITHIN = 10.0  # seconds any single expected packet may take

PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 3, 4, 5, 6, 7
SUBACK, UNSUBACK, PINGRESP = 9, 11, 13


def _string(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def frame(first: int, body: bytes = b"") -> bytes:
    return bytes([first]) + _remaining_length(len(body)) + body


def connect_packet(
    client_id: str,
    *,
    clean: bool = True,
    keepalive: int = 60,
    will: tuple[str, bytes, int, bool] | None = None,
) -> bytes:
    flags = 0x02 if clean else 0
    payload = _string(client_id.encode())
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _string(topic.encode()) + _string(message)
    body = _string(b"MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload
    return frame(0x10, body)


def publish_packet(
    topic: str, payload: bytes, qos: int = 0, packet_id: int = 0, *, retain: bool = False
) -> bytes:
    pid = struct.pack("!H", packet_id) if qos else b""
    return frame(0x30 | qos << 1 | retain, _string(topic.encode()) + pid + payload)


def ack_packet(kind: int, packet_id: int) -> bytes:
    return frame(kind << 4 | (0b0010 if kind == PUBREL else 0), struct.pack("!H", packet_id))


@dataclass(frozen=True)
class Packet:
    kind: int
    flags: int
    body: bytes

    @property
    def packet_id(self) -> int:
        """The packet id of an acknowledgement, or of a QoS 1/2 PUBLISH."""
        if self.kind != PUBLISH:
            return int(struct.unpack("!H", self.body[:2])[0])
        n = struct.unpack("!H", self.body[:2])[0]
        return int(struct.unpack("!H", self.body[2 + n : 4 + n])[0])

    @property
    def topic(self) -> str:
        n = struct.unpack("!H", self.body[:2])[0]
        return self.body[2 : 2 + n].decode()

    @property
    def payload(self) -> bytes:
        n = struct.unpack("!H", self.body[:2])[0]
        return self.body[2 + n + (2 if self.qos else 0) :]

    @property
    def qos(self) -> int:
        return (self.flags >> 1) & 0x03

    @property
    def dup(self) -> bool:
        return bool(self.flags & 0x08)

    @property
    def retain(self) -> bool:
        return bool(self.flags & 0x01)


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, *, rcvbuf: int | None = None) -> RawClient:
        """A TCP connection, no CONNECT yet; ``rcvbuf`` shrinks its receive buffer."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, port))
        limit = rcvbuf or 2**16
        reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read(self, within: float = WITHIN) -> Packet:
        async def one() -> Packet:
            first = (await self.reader.readexactly(1))[0]
            length, shift = 0, 0
            while True:
                byte = (await self.reader.readexactly(1))[0]
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            return Packet(first >> 4, first & 0x0F, await self.reader.readexactly(length))

        return await asyncio.wait_for(one(), within)

    async def expect(self, kind: int, within: float = WITHIN) -> Packet:
        got = await self.read(within)
        assert got.kind == kind, got
        return got

    async def closed(self, within: float = WITHIN) -> bool:
        """True when the broker closes the connection within ``within`` s (data ignored)."""

        async def eof() -> None:
            while await self.reader.read(65536):
                pass

        try:
            await asyncio.wait_for(eof(), within)
            return True
        except asyncio.TimeoutError:
            return False
        except ConnectionError:
            return True

    async def subscribe(self, topic_filter: str, qos: int, packet_id: int = 1) -> int:
        body = struct.pack("!H", packet_id) + _string(topic_filter.encode()) + bytes([qos])
        self.send(frame(0x82, body))
        suback = await self.expect(SUBACK)
        return suback.body[2]

    async def unsubscribe(self, topic_filter: str, packet_id: int = 1) -> None:
        self.send(frame(0xA2, struct.pack("!H", packet_id) + _string(topic_filter.encode())))
        await self.expect(UNSUBACK)

    async def publish(
        self, topic: str, payload: bytes, qos: int = 0, packet_id: int = 1, *, retain: bool = False
    ) -> None:
        """Publish and complete the flow for ``qos``."""
        self.send(publish_packet(topic, payload, qos, packet_id, retain=retain))
        if qos == 1:
            await self.expect(PUBACK)
        elif qos == 2:
            await self.expect(PUBREC)
            self.send(ack_packet(PUBREL, packet_id))
            await self.expect(PUBCOMP)

    async def ping(self) -> None:
        self.send(frame(0xC0))
        await self.expect(PINGRESP)

    async def disconnect(self) -> None:
        self.send(frame(0xE0))
        await self.closed()
        self.writer.close()

    def abort(self) -> None:
        """Vanish: no DISCONNECT; SO_LINGER 0 makes the close a TCP reset."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


class RawClients:
    """Opens raw clients and closes every one of them at the end (a fixture's teardown)."""

    def __init__(self) -> None:
        self._made: list[RawClient] = []

    async def open(self, port: int, *, rcvbuf: int | None = None) -> RawClient:
        self._made.append(await RawClient.open(port, rcvbuf=rcvbuf))
        return self._made[-1]

    async def connect(
        self, port: int, client_id: str, *, rcvbuf: int | None = None, **options: object
    ) -> tuple[RawClient, bool]:
        c = await self.open(port, rcvbuf=rcvbuf)
        c.send(connect_packet(client_id, **options))  # type: ignore[arg-type]
        connack = await c.read()
        assert connack.kind == 2 and connack.body[1] == 0, connack
        return c, bool(connack.body[0] & 1)

    async def aclose(self) -> None:
        for c in self._made:
            c.writer.transport.abort()
        for c in self._made:
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(c.writer.wait_closed(), WITHIN)


async def receive(c: RawClient, within: float = WITHIN) -> Packet:
    """The next PUBLISH, acknowledged as its QoS requires (a PUBREL on the way: PUBCOMP)."""
    while True:
        got = await c.read(within)
        if got.kind == PUBREL:
            c.send(ack_packet(PUBCOMP, got.packet_id))
        elif got.kind == PUBLISH:
            if got.qos == 1:
                c.send(ack_packet(PUBACK, got.packet_id))
            elif got.qos == 2:
                c.send(ack_packet(PUBREC, got.packet_id))
            return got


async def until(c: RawClient, marker: bytes, within: float = WITHIN) -> list[Packet]:
    """Every PUBLISH before the one whose payload is ``marker``."""
    seen: list[Packet] = []
    while (got := await receive(c, within)).payload != marker:
        seen.append(got)
    return seen
