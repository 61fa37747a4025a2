"""What fedmq's broker keeps per client id: subscriptions, queues and in-flight state.

A session outlives its connections unless it is clean (§3.1.2.4). Messages wait in two
bounded queues: QoS 0 (dropped when full, as Mosquitto drops them) and QoS 1/2 (up to
``max_queued`` beyond the in-flight window, kept while the client is offline). The
connection's writer takes packets from here in publication order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Protocol

from tools.broker.mqtt_codec import PUBACK, PUBCOMP, PUBREC, PUBREL, Message, ack, publish_packet

log = logging.getLogger(__name__)

WAIT_ACK, WAIT_REC, WAIT_COMP = "puback", "pubrec", "pubcomp"  # what an in-flight message awaits


@dataclass(frozen=True)
class Limits:
    max_inflight: int = 100  # as max_inflight_messages in broker_config/dev.conf
    max_queued: int = 10_000  # QoS 1/2 beyond the window, as max_queued_messages
    max_queued_qos0: int = 1_000  # QoS 0 waiting for a slow reader
    max_queued_bytes: int = 16 * 1024 * 1024  # payload bytes of those QoS 0 messages


class Link(Protocol):
    """The session's view of its connection: wake its writer."""

    def wake(self) -> None: ...


class DropLog:
    """Counts messages dropped per client and logs them as one line per interval."""

    def __init__(self, interval: float):
        self.interval = interval
        self.counts: Counter[tuple[str, str]] = Counter()
        self._timer: asyncio.TimerHandle | None = None

    def drop(self, client_id: str, why: str) -> None:
        self.counts[client_id, why] += 1
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self.flush)

    def flush(self) -> None:
        """Log what was dropped since the last line, if anything; at most one line."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.counts:
            parts = ", ".join(f"{cid} {n} ({why})" for (cid, why), n in sorted(self.counts.items()))
            log.warning("dropped %d messages for slow or offline clients: %s", self.total, parts)
            self.counts.clear()

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class Session:
    client_id: str
    clean: bool
    limits: Limits
    drops: DropLog
    subscriptions: dict[str, int] = field(default_factory=dict)
    inflight: dict[int, tuple[Message, str]] = field(default_factory=dict)  # sent, unfinished
    pending: deque[tuple[int, Message]] = field(default_factory=deque)  # QoS 1/2, not yet sent
    qos0: deque[tuple[int, Message]] = field(default_factory=deque)
    qos0_bytes: int = 0
    incoming: dict[int, Message] = field(default_factory=dict)  # QoS 2 received, no PUBREL yet
    link: Link | None = None
    last_id: int = 0
    seq: int = 0

    def deliver(self, message: Message) -> None:
        """Queue ``message`` for this client, or count it as dropped when its queue is full."""
        self.seq += 1
        if message.qos == 0:
            if self.link is None:
                return  # §3.1.2.4: QoS 0 is not kept for an offline session
            size = len(message.payload)
            full = len(self.qos0) >= self.limits.max_queued_qos0 or (
                self.qos0 and self.qos0_bytes + size > self.limits.max_queued_bytes
            )
            if full:
                self.drops.drop(self.client_id, "QoS 0 queue full")
                return
            self.qos0.append((self.seq, message))
            self.qos0_bytes += size
        elif len(self.pending) < self.limits.max_queued:
            self.pending.append((self.seq, message))
        else:
            self.drops.drop(self.client_id, "queue full")
            return
        if self.link is not None:
            self.link.wake()

    def next_packet(self) -> bytes | None:
        """The next PUBLISH to send, in publication order, while the window has room."""
        ready = bool(self.pending) and len(self.inflight) < self.limits.max_inflight
        if self.qos0 and (not ready or self.qos0[0][0] < self.pending[0][0]):
            _, message = self.qos0.popleft()
            self.qos0_bytes -= len(message.payload)
            return publish_packet(message, None)
        if not ready:
            return None
        _, message = self.pending.popleft()
        packet_id = self._next_id()
        self.inflight[packet_id] = (message, WAIT_ACK if message.qos == 1 else WAIT_REC)
        return publish_packet(message, packet_id)

    def resume(self) -> list[bytes]:
        """§4.4: on reconnect, resend unacknowledged PUBLISHes with DUP set, and PUBRELs."""
        return [
            ack(PUBREL, pid) if state == WAIT_COMP else publish_packet(msg, pid, dup=True)
            for pid, (msg, state) in self.inflight.items()
        ]

    def acknowledged(self, kind: int, packet_id: int) -> bytes | None:
        """Advance an outgoing QoS 1/2 flow on PUBACK, PUBREC or PUBCOMP; a reply, if any."""
        entry = self.inflight.get(packet_id)
        expected = {PUBACK: WAIT_ACK, PUBREC: WAIT_REC, PUBCOMP: WAIT_COMP}[kind]
        if kind == PUBREC:
            if entry is not None and entry[1] == WAIT_REC:
                self.inflight[packet_id] = (entry[0], WAIT_COMP)
            return ack(PUBREL, packet_id)  # §4.3.3: also for a PUBREC sent again
        if entry is not None and entry[1] == expected:
            del self.inflight[packet_id]
            if self.link is not None:
                self.link.wake()  # the window has room again
        return None

    def discard_queues(self) -> None:
        self.qos0.clear()
        self.qos0_bytes = 0

    def _next_id(self) -> int:
        while True:
            self.last_id = self.last_id % 65535 + 1
            if self.last_id not in self.inflight:
                return self.last_id
