"""The ``feature_stats`` message: a device's feature moments, for federated standardization.

A device publishes it on ``fl/{fleet}/stats/{device}`` (QoS 1, retained, so an
aggregator that starts later still finds every device's latest one) at start and
again when its data changes. It carries only moments (``fedmq.preprocess.Moments``):
count, and per feature the sum, sum of squares, min and max, as msgpack float64
arrays, so the pooled mean and variance are exact; and, for a file with a header, the
feature names in the order of those arrays, so a device whose columns are in another
order than the fleet's schema is read by name (``in_order``). docs/wire.md section 3.7.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from fedmq.envelope import Message
from fedmq.errors import DataError, WireError
from fedmq.fields import MAX_ITEMS, Check, as_device, as_hex, as_int, as_str, as_time
from fedmq.preprocess import Moments
from fedmq.schema import MAX_NAME

# One msgpack array holds at most MAX_ITEMS entries (docs/wire.md section 5).
MAX_FEATURES = MAX_ITEMS
# Counts stay exact in float64 sums below 2**53.
MAX_COUNT = 2**53


def as_float64s(value: Any, name: str) -> list[float]:
    """A non-empty msgpack array of finite floats (float64 or float32 on the wire)."""
    if not isinstance(value, list):
        raise WireError("bad_type", f"{name} must be an array of floats")
    if not 1 <= len(value) <= MAX_FEATURES:
        raise WireError("bad_value", f"{name} needs 1..{MAX_FEATURES} entries, got {len(value)}")
    for v in value:
        if not isinstance(v, float):
            raise WireError("bad_type", f"{name} must hold floats only")
        if not math.isfinite(v):
            raise WireError("non_finite", f"{name} holds NaN or infinity")
    return value


def as_names(value: Any, name: str) -> list[str]:
    """Distinct, non-empty, printable feature names, at most MAX_NAME characters each."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_FEATURES:
        raise WireError("bad_type", f"{name} must be an array of 1..{MAX_FEATURES} names")
    for v in value:
        as_str(max_len=MAX_NAME)(v, name)
        if not v.strip() or not v.isprintable():
            raise WireError("bad_value", f"{name} holds an empty name or control characters")
    if len(set(value)) != len(value):
        raise WireError("bad_value", f"{name} must be distinct")
    return value


@dataclass
class FeatureStats(Message):
    """One device's feature moments over its current data set.

    ``digest`` (SHA-256 hex of the data file) names the data they describe; ``at``
    orders a device's messages: the aggregator keeps the latest one per device.
    """

    device: str
    count: int
    sum: list[float]
    sumsq: list[float]
    min: list[float]
    max: list[float]
    digest: str
    at: float
    features: list[str] | None = None  # names, in the arrays' order (None: by position)

    KIND: ClassVar[str] = "feature_stats"
    FIELDS: ClassVar[dict[str, Check]] = {
        "device": as_device,
        "count": as_int(1, MAX_COUNT),
        "sum": as_float64s,
        "sumsq": as_float64s,
        "min": as_float64s,
        "max": as_float64s,
        "digest": as_hex(64),
        "at": as_time,
        "features": as_names,
    }
    OPTIONAL: ClassVar[dict[str, Any]] = {"features": None}

    @classmethod
    def of(
        cls,
        moments: Moments,
        *,
        device: str,
        digest: str,
        at: float,
        features: Sequence[str] | None = None,
    ) -> FeatureStats:
        return cls(
            device,
            moments.count,
            moments.sum.tolist(),
            moments.sumsq.tolist(),
            moments.min.tolist(),
            moments.max.tolist(),
            digest,
            at,
            None if features is None else list(features),
        )

    @property
    def width(self) -> int:
        return len(self.sum)

    def in_order(self, names: Sequence[str]) -> FeatureStats:
        """These moments with the features in the order ``names`` gives; DataError
        (``missing_feature`` / ``extra_feature``) when the names are not the same set."""
        if self.features is None:
            return self
        held = {n: i for i, n in enumerate(self.features)}
        missing = [n for n in names if n not in held]
        extra = sorted(set(held) - set(names))
        if missing or extra:
            raise DataError(
                "missing_feature" if missing else "extra_feature",
                f"{self.device}'s statistics lack the feature(s) {missing} and name {extra}, "
                "which the schema does not",
            )
        order = [held[n] for n in names]
        return replace(
            self,
            sum=[self.sum[i] for i in order],
            sumsq=[self.sumsq[i] for i in order],
            min=[self.min[i] for i in order],
            max=[self.max[i] for i in order],
            features=list(names),
        )

    def moments(self) -> Moments:
        return Moments(
            self.count,
            np.array(self.sum, np.float64),
            np.array(self.sumsq, np.float64),
            np.array(self.min, np.float64),
            np.array(self.max, np.float64),
        )

    @classmethod
    def _build(cls, values: dict[str, Any]) -> FeatureStats:
        stats = cls(**values)
        widths = {len(stats.sum), len(stats.sumsq), len(stats.min), len(stats.max)}
        if stats.features is not None:
            widths.add(len(stats.features))
        if len(widths) != 1:
            raise WireError("bad_shape", "sum, sumsq, min, max and features must have one length")
        try:
            stats.moments()
        except DataError as exc:  # sumsq < 0 or min > max
            raise WireError("bad_value", exc.message) from None
        return stats
