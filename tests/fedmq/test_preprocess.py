"""fedmq.preprocess: pooled moments are exact, and re-parameterization keeps the function."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmq.errors import DataError
from fedmq.model import Arch, forward, init_weights
from fedmq.preprocess import Moments, Standardizer, pool, reparameterize


def sensor_data(rng: np.random.Generator, n: int) -> np.ndarray:
    """Features in very different units: scales from 1e-3 to 1e4, with offsets."""
    scales = np.array([1e-3, 1.0, 50.0, 1e4])
    offsets = np.array([0.5, -20.0, 300.0, 1e4])
    return rng.normal(size=(n, 4)) * scales + offsets


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(1, 199), max_size=6))
def test_pooled_moments_equal_the_moments_of_the_union(seed: int, cuts: list[int]) -> None:
    x = sensor_data(np.random.default_rng(seed), 200)
    parts = [p for p in np.split(x, sorted(set(cuts))) if len(p)]
    pooled, whole = pool(Moments.of(p) for p in parts), Moments.of(x)
    assert pooled.count == whole.count
    np.testing.assert_allclose(pooled.mean, x.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.sqrt(pooled.var), x.std(0), rtol=1e-6)
    np.testing.assert_array_equal(pooled.min, whole.min)
    np.testing.assert_array_equal(pooled.max, whole.max)


def test_standardized_features_have_zero_mean_and_unit_scale() -> None:
    x = sensor_data(np.random.default_rng(0), 1000)
    z = Standardizer.from_moments(Moments.of(x)).apply(x)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(z.std(0), 1, rtol=1e-3)


def test_a_constant_feature_keeps_scale_one() -> None:
    x = np.column_stack([np.full(10, 7.0), np.arange(10.0)])
    s = Standardizer.from_moments(Moments.of(x))
    assert s.scale[0] == 1.0 and np.isfinite(s.apply(x)).all()


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["mlp", "linear"]))
def test_reparameterizing_keeps_the_function_on_raw_inputs(seed: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    arch = Arch(kind, (4, 8, 3) if kind == "mlp" else (4, 2))
    weights = init_weights(arch, seed % 1000)
    first = sensor_data(rng, 30)  # the statistics of the first devices
    joined = np.vstack([first, sensor_data(rng, 50) * 1.5 + 10])  # a device joins
    old = Standardizer.from_moments(Moments.of(first))
    new = Standardizer.from_moments(Moments.of(joined))
    moved = reparameterize(weights, old, new)
    raw = sensor_data(rng, 100)
    before = forward(arch, weights, old.apply(raw))
    after = forward(arch, moved, new.apply(raw))
    # Exact in real arithmetic; what is left is float32 rounding of (x - mean) / scale on
    # features of magnitude 1e4 (worst seen over 200 seeds: 5.6e-4 of the output's range).
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-3 * np.abs(before).max())


def test_reparameterizing_to_the_same_statistics_changes_nothing() -> None:
    arch = Arch("mlp", (4, 8, 3))
    w = init_weights(arch, 0)
    s = Standardizer.from_moments(Moments.of(sensor_data(np.random.default_rng(1), 40)))
    moved = reparameterize(w, s, s)
    np.testing.assert_array_equal(moved["w0"], w["w0"])
    np.testing.assert_allclose(moved["b0"], w["b0"], atol=0)


@pytest.mark.parametrize(
    "bad",
    [
        dict(count=0),
        dict(sum=np.array([np.nan, 0.0])),
        dict(sumsq=np.array([-1.0, 0.0])),
        dict(min=np.array([5.0, 0.0]), max=np.array([1.0, 0.0])),
        dict(sum=np.zeros(3)),
    ],
)
def test_bad_statistics_are_refused(bad: dict) -> None:
    good = dict(count=2, sum=np.zeros(2), sumsq=np.ones(2), min=np.zeros(2), max=np.ones(2))
    with pytest.raises(DataError):
        Moments(**{**good, **bad})


def test_devices_with_different_feature_counts_cannot_be_pooled() -> None:
    with pytest.raises(DataError, match="different feature counts"):
        pool([Moments.of(np.ones((2, 3))), Moments.of(np.ones((2, 4)))])
