"""The per-client queues of fedmq's broker, without I/O: order, window, bounds, drops."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from tools.broker.mqtt_codec import PUBACK, PUBCOMP, PUBREC, Fields, Message
from tools.broker.mqtt_session import DropLog, Limits, Session


class Awake:
    def __init__(self) -> None:
        self.woken = 0

    def wake(self) -> None:
        self.woken += 1


def session(**limits: int) -> Session:
    s = Session("c", clean=True, limits=Limits(**limits), drops=DropLog(60.0))
    s.link = Awake()
    return s


def sent(s: Session) -> list[tuple[int, bytes]]:
    """(QoS, payload) of every PUBLISH the session hands out now."""
    out = []
    while (data := s.next_packet()) is not None:
        qos = (data[0] >> 1) & 3
        fields = Fields(data[2:] if data[1] < 128 else data[3:])
        fields.string()
        if qos:
            fields.uint16()
        out.append((qos, fields.rest()))
    return out


def test_publication_order_across_qos_while_the_window_has_room() -> None:
    s = session()
    for i, qos in enumerate([0, 1, 0, 2, 1]):
        s.deliver(Message("t", bytes([i]), qos))
    assert sent(s) == [(0, b"\0"), (1, b"\1"), (0, b"\2"), (2, b"\3"), (1, b"\4")]


def test_a_full_window_holds_qos1_but_not_qos0() -> None:
    s = session(max_inflight=1)
    for i, qos in enumerate([1, 1, 0]):
        s.deliver(Message("t", bytes([i]), qos))
    assert sent(s) == [(1, b"\0"), (0, b"\2")]
    (packet_id,) = s.inflight
    assert s.acknowledged(PUBACK, packet_id) is None
    assert sent(s) == [(1, b"\1")]


def test_qos2_outgoing_flow_and_resume() -> None:
    s = session()
    s.deliver(Message("t", b"x", 2))
    assert sent(s) == [(2, b"x")]
    (pid,) = s.inflight
    assert s.resume()[0][0] & 0x08  # before PUBREC: the PUBLISH again, DUP set
    assert s.acknowledged(PUBREC, pid) == bytes([0x62, 2, 0, pid])  # PUBREL
    assert s.resume() == [bytes([0x62, 2, 0, pid])]  # after PUBREC: PUBREL, not the message
    s.acknowledged(PUBCOMP, pid)
    assert s.inflight == {} and s.resume() == []


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5000)), max_size=200))
def test_queues_stay_within_their_bounds(deliveries: list[tuple[int, int]]) -> None:
    async def check() -> None:
        limits = {"max_inflight": 2, "max_queued": 5, "max_queued_qos0": 4}
        s = session(**limits, max_queued_bytes=6000)
        for qos, size in deliveries:
            s.deliver(Message("t", bytes(size), qos))
            assert len(s.pending) <= 5 and len(s.qos0) <= 4
            assert s.qos0_bytes <= 6000 or len(s.qos0) == 1
        kept = len(s.pending) + len(s.qos0)
        assert kept + s.drops.total == len(deliveries)

    asyncio.run(check())


async def test_offline_qos0_is_not_kept_and_not_counted() -> None:
    s = session()
    s.link = None
    s.deliver(Message("t", b"x", 0))
    s.deliver(Message("t", b"y", 1))
    assert (len(s.qos0), len(s.pending), s.drops.total) == (0, 1, 0)
