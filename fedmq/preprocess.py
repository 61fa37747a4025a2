"""Feature standardization learnt from the whole fleet, without pooling any data.

Each device summarises its features as moments (count, per-feature sum, sum of squares,
min, max, in float64); moments add, so the pooled mean and variance are exact however
the data is split. The global model carries the resulting mean and scale, devices
train on ``(x − mean) / scale``, and the ONNX export applies the same step, so raw
rows go straight in.

When a device joins and the pooled statistics move, ``reparameterize`` rewrites the
first layer so the model computes the same function of raw inputs as before: with
``x̂ = (x − m) / s`` the first layer is ``x̂ W + b``, and

    W′ᵢ = Wᵢ · s′ᵢ / sᵢ          b′ = b + Σᵢ (m′ᵢ − mᵢ) / sᵢ · Wᵢ

gives ``((x − m′) / s′) W′ + b′ = ((x − m) / s) W + b`` for every x (Wᵢ is row i).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from fedmq.errors import DataError
from fedmq.model import Weights

# A feature whose pooled spread is below this (relative to its magnitude, or absolutely)
# is constant for learning purposes; dividing by its spread would only amplify noise.
MIN_SCALE = 1e-8


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of one data set's features (float64 arrays of one length)."""

    count: int
    sum: np.ndarray
    sumsq: np.ndarray
    min: np.ndarray
    max: np.ndarray

    def __post_init__(self) -> None:
        arrays = [
            np.asarray(a, dtype=np.float64) for a in (self.sum, self.sumsq, self.min, self.max)
        ]
        widths = {a.shape for a in arrays}
        if len(widths) != 1 or arrays[0].ndim != 1 or arrays[0].size == 0:
            raise DataError(
                "bad_stats", f"feature statistics need four equal 1-D arrays, got {widths}"
            )
        if not all(np.isfinite(a).all() for a in arrays):
            raise DataError("bad_stats", "feature statistics must be finite")
        if isinstance(self.count, bool) or int(self.count) < 1:
            raise DataError("bad_stats", f"feature statistics need count >= 1, got {self.count}")
        if (arrays[1] < 0).any() or (arrays[2] > arrays[3]).any():
            raise DataError(
                "bad_stats", "feature statistics are inconsistent (sumsq < 0 or min > max)"
            )
        for name, a in zip(("sum", "sumsq", "min", "max"), arrays, strict=True):
            object.__setattr__(self, name, a)
        object.__setattr__(self, "count", int(self.count))

    @property
    def width(self) -> int:
        return int(self.sum.size)

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise DataError("bad_shape", f"need a non-empty (n, features) array, got {x.shape}")
        return cls(x.shape[0], x.sum(0), np.square(x).sum(0), x.min(0), x.max(0))

    @property
    def mean(self) -> np.ndarray:
        return self.sum / self.count

    @property
    def var(self) -> np.ndarray:
        """Population variance; rounding can make sumsq/n − mean² slightly negative: clip."""
        return np.maximum(self.sumsq / self.count - np.square(self.mean), 0.0)


def pool(parts: Iterable[Moments]) -> Moments:
    """The moments of the union of the parts' data sets (exact: moments add)."""
    parts = list(parts)
    if not parts:
        raise DataError("bad_stats", "no feature statistics to pool")
    widths = {p.width for p in parts}
    if len(widths) != 1:
        raise DataError("bad_stats", f"devices report different feature counts: {sorted(widths)}")
    return Moments(
        sum(p.count for p in parts),
        np.sum([p.sum for p in parts], axis=0),
        np.sum([p.sumsq for p in parts], axis=0),
        np.min([p.min for p in parts], axis=0),
        np.max([p.max for p in parts], axis=0),
    )


@dataclass(frozen=True)
class Standardizer:
    """``(x − mean) / scale`` per feature (float32, as the model and ONNX compute it)."""

    mean: np.ndarray
    scale: np.ndarray

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float32)
        scale = np.asarray(self.scale, dtype=np.float32)
        if mean.shape != scale.shape or mean.ndim != 1:
            raise DataError("bad_stats", "mean and scale must be 1-D arrays of one length")
        if not (np.isfinite(mean).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise DataError("bad_stats", "mean must be finite and scale finite and > 0")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "scale", scale)

    @classmethod
    def identity(cls, width: int) -> Standardizer:
        return cls(np.zeros(width, np.float32), np.ones(width, np.float32))

    @classmethod
    def from_moments(cls, m: Moments) -> Standardizer:
        std = np.sqrt(m.var)
        floor = MIN_SCALE * np.maximum(1.0, np.abs(m.mean))
        return cls(m.mean, np.where(std > floor, std, 1.0))

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - self.mean) / self.scale).astype(np.float32)

    def same_as(self, other: Standardizer) -> bool:
        return bool(
            np.array_equal(self.mean, other.mean) and np.array_equal(self.scale, other.scale)
        )


def reparameterize(
    weights: Mapping[str, np.ndarray], old: Standardizer, new: Standardizer
) -> Weights:
    """First-layer weights for ``new`` that keep the model's function of raw inputs."""
    w0 = np.asarray(weights["w0"], dtype=np.float64)
    if w0.shape[0] != old.mean.size or old.mean.size != new.mean.size:
        raise DataError("bad_stats", "standardization width does not match the model's inputs")
    s_old, s_new = old.scale.astype(np.float64), new.scale.astype(np.float64)
    shift = (new.mean.astype(np.float64) - old.mean.astype(np.float64)) / s_old
    out = dict(weights)
    out["w0"] = (w0 * (s_new / s_old)[:, None]).astype(np.float32)
    out["b0"] = (np.asarray(weights["b0"], dtype=np.float64) + shift @ w0).astype(np.float32)
    if not all(math.isfinite(float(np.abs(v).max())) for v in (out["w0"], out["b0"])):
        raise DataError("bad_stats", "re-parameterizing for the new statistics overflowed")
    return out
