"""The ``history`` message: the aggregator's recent history, retained for operators.

The aggregator publishes it on ``fl/{fleet}/aggregator/history`` (QoS 1, retained): its
last ``MAX_POINTS`` published versions as columns (version, time, accuracy, loss,
updates accepted), so ``fedmq model history`` can plot a run without the aggregator's
disk. docs/wire.md section 3.6.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from fedmq.envelope import Message
from fedmq.errors import WireError
from fedmq.fields import Check, as_float, as_hex, as_int, as_time, optional

MAX_POINTS = 500
RUN_HEX = 16  # as GlobalModel.run
COLUMNS = ("versions", "times", "accuracy", "loss", "accepted")
# A point's keys, as in history.jsonl: the column each comes from.
POINT_KEYS = {"version": "versions", "time": "times", "accuracy": "accuracy"}
POINT_KEYS |= {"loss": "loss", "accepted": "accepted"}


def as_list(item: Check, max_items: int = MAX_POINTS) -> Check:
    def check(value: Any, name: str) -> list[Any]:
        if not isinstance(value, list):
            raise WireError("bad_type", f"{name} must be an array")
        if len(value) > max_items:
            raise WireError("bad_value", f"{name} has more than {max_items} entries")
        return [item(v, f"{name}[{i}]") for i, v in enumerate(value)]

    return check


@dataclass
class HistorySummary(Message):
    """One entry per published version in each column, oldest first."""

    run: str
    versions: list[int]
    times: list[float]
    accuracy: list[float | None]
    loss: list[float | None]
    accepted: list[int]
    at: float

    KIND: ClassVar[str] = "history"
    FIELDS: ClassVar[dict[str, Check]] = {
        "run": as_hex(RUN_HEX),
        "versions": as_list(as_int(0, 2**63 - 1)),
        "times": as_list(as_time),
        "accuracy": as_list(optional(as_float())),
        "loss": as_list(optional(as_float())),
        "accepted": as_list(as_int(0, 2**63 - 1)),
        "at": as_time,
    }

    @classmethod
    def _build(cls, values: dict[str, Any]) -> HistorySummary:
        summary = cls(**values)
        lengths = {len(getattr(summary, c)) for c in COLUMNS}
        if len(lengths) != 1:
            raise WireError("bad_value", "the history's columns differ in length")
        v = summary.versions
        if any(b <= a for a, b in itertools.pairwise(v)):
            raise WireError("bad_value", "the history's versions must increase")
        return summary

    @classmethod
    def from_points(
        cls, run: str, points: Iterable[Mapping[str, Any]], at: float
    ) -> HistorySummary:
        """From history.jsonl-like points (the last ``MAX_POINTS``)."""
        rows = list(points)[-MAX_POINTS:]
        columns = {c: [r.get(k) for r in rows] for k, c in POINT_KEYS.items()}
        columns["accepted"] = [int(a or 0) for a in columns["accepted"]]
        return cls(run=run, at=at, **columns)

    def points(self) -> list[dict[str, Any]]:
        """The columns as rows with history.jsonl's keys."""
        cols = [getattr(self, c) for c in POINT_KEYS.values()]
        return [dict(zip(POINT_KEYS, row, strict=True)) for row in zip(*cols, strict=True)]
