"""The ``history`` message: round trips, its column rules, and fuzzing of its decoder."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmq.errors import WireError
from fedmq.history import MAX_POINTS, HistorySummary
from fedmq.wire import decode_any

runs = st.text("0123456789abcdef", min_size=16, max_size=16)
finite = st.floats(-1e9, 1e9, allow_nan=False)


@st.composite
def summaries(draw: st.DrawFn, max_points: int = 40) -> HistorySummary:
    versions = sorted(draw(st.sets(st.integers(0, 2**63 - 1), max_size=max_points)))
    n = len(versions)

    def column(elements: st.SearchStrategy) -> list:
        return draw(st.lists(elements, min_size=n, max_size=n))

    return HistorySummary(
        run=draw(runs),
        versions=versions,
        times=column(st.floats(0, 4e9)),
        accuracy=column(st.none() | st.floats(0, 1)),
        loss=column(st.none() | finite),
        accepted=column(st.integers(0, 2**63 - 1)),
        at=draw(st.floats(0, 4e9)),
    )


def _body(h: HistorySummary) -> dict:
    return {"v": 1, "kind": "history", **h.to_map()}


def _refused(body: dict, reason: str) -> None:
    data = msgpack.packb(body, use_bin_type=True)
    for decode in (HistorySummary.decode, decode_any):
        with pytest.raises(WireError) as err:
            decode(data)
        assert err.value.reason == reason, err.value


@given(summaries())
def test_a_summary_round_trips_and_its_points_are_history_lines(h: HistorySummary) -> None:
    assert HistorySummary.decode(h.encode()) == h == decode_any(h.encode())
    points = h.points()
    assert [p["version"] for p in points] == h.versions
    assert HistorySummary.from_points(h.run, points, h.at) == h


@given(summaries(), st.sampled_from(["versions", "times", "accuracy", "loss", "accepted"]))
def test_columns_of_another_length_are_refused(h: HistorySummary, column: str) -> None:
    body = _body(h)
    body[column] = [*body[column], 1]
    _refused(body, "bad_value")


@given(summaries().filter(lambda h: len(h.versions) >= 2), st.data())
def test_versions_that_do_not_increase_are_refused(h: HistorySummary, data) -> None:
    body = _body(h)
    i = data.draw(st.integers(1, len(h.versions) - 1))
    j = data.draw(st.integers(0, i - 1))
    body["versions"][i] = body["versions"][j]  # equal to, or below, one before it
    _refused(body, "bad_value")


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("versions", "0,1", "bad_type"),
        ("versions", [True], "bad_type"),
        ("times", [-1.0], "bad_value"),
        ("accuracy", [float("nan")], "non_finite"),
        ("accepted", [1.5], "bad_type"),
        ("run", "0F1E2D3C4B5A6978", "bad_value"),
    ],
)
def test_each_column_is_checked(column, value, reason) -> None:
    body = _body(HistorySummary.from_points("0" * 16, [{"version": 1, "time": 1.0}], 2.0))
    body[column] = value
    _refused(body, reason)


def test_more_than_max_points_is_refused_and_from_points_keeps_the_last() -> None:
    rows = [{"version": v, "time": float(v), "accepted": v} for v in range(MAX_POINTS + 20)]
    h = HistorySummary.from_points("0" * 16, rows, 1.0)
    assert h.versions[0] == 20 and len(h.versions) == MAX_POINTS
    body = _body(h)
    for column in ("versions", "times", "accuracy", "loss", "accepted"):
        body[column] = [*body[column], body[column][-1]]
    body["versions"][-1] += 1
    _refused(body, "bad_value")


VALID = HistorySummary.from_points(
    "00112233aabbccdd",
    [
        {"version": v, "time": 10.0 + v, "accuracy": v / 10, "loss": 1.0, "accepted": v}
        for v in range(5)
    ],
    20.0,
).encode()


def _decode(data: bytes) -> None:
    with contextlib.suppress(WireError):
        HistorySummary.decode(data)
    with contextlib.suppress(WireError):
        decode_any(data)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, 10**6),
)
def test_mutated_and_truncated_history_raises_only_wire_error(flips, cut: int) -> None:
    data = bytearray(VALID)
    for pos, byte in flips:
        data[pos % len(data)] = byte
    _decode(bytes(data))
    _decode(bytes(data[: cut % len(data)]))


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text()
    | st.binary(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["run", "versions", "times", "accuracy", "loss", "accepted", "at"]), values)
def test_any_field_replaced_by_any_value_raises_only_wire_error(key: str, value) -> None:
    body = msgpack.unpackb(VALID)
    body[key] = value
    _decode(msgpack.packb(body, use_bin_type=True))
