"""Each formula checked against numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.strategies import (
    Contribution,
    FedAsync,
    FedAvg,
    FedBuff,
    Staleness,
    make_strategy,
)
from fedmq.errors import ConfigError, UpdateRejected


def w(value: float) -> dict[str, np.ndarray]:
    return {"w0": np.full((2,), value, np.float32), "b0": np.array([value], np.float32)}


def contrib(delta: float, base: int, n: int = 1, device: str = "d") -> Contribution:
    return Contribution(delta=w(delta), base_version=base, num_samples=n, device=device)


@pytest.mark.parametrize(
    ("spec", "d", "expected"),
    [
        ("constant", 7, 1.0),
        ("poly:0.5", 0, 1.0),
        ("poly:0.5", 3, 0.5),  # (3 + 1) ** -0.5
        ("poly:1", 4, 0.2),
        ("hinge:0.5,2", 2, 1.0),  # d <= b
        ("hinge:0.5,2", 6, 1 / 3),  # 1 / (0.5 * (6 - 2) + 1)
    ],
)
def test_staleness_functions(spec, d, expected):
    assert Staleness.parse(spec)(d) == pytest.approx(expected)


@pytest.mark.parametrize("spec", ["", "poly", "poly:x", "hinge:1", "cubic:2", "poly:-1"])
def test_bad_staleness_specs(spec):
    with pytest.raises(ConfigError):
        Staleness.parse(spec)


def test_fedasync_fresh_update_mixes_with_alpha():
    s = FedAsync(w(1.0), alpha=0.5, staleness="constant")
    assert s.apply(contrib(2.0, base=0))
    # x_new = 1 + 2 = 3; x = 0.5 * 1 + 0.5 * 3 = 2
    np.testing.assert_allclose(s.weights["w0"], [2.0, 2.0])
    assert s.version == 1


def test_fedasync_stale_update_rebuilds_from_its_base_and_is_discounted():
    s = FedAsync(w(0.0), alpha=0.8, staleness="poly:1")
    s.apply(contrib(1.0, base=0))  # x1 = 0.8 * (0 + 1) = 0.8
    s.apply(contrib(1.0, base=1))  # x2 = 0.2 * 0.8 + 0.8 * (0.8 + 1) = 1.6
    np.testing.assert_allclose(s.weights["b0"], [1.6], rtol=1e-6)
    # staleness 2 from base 0: a = 0.8 * 3**-1; x_new = x0 + 3 = 3
    s.apply(contrib(3.0, base=0))
    a = 0.8 / 3
    np.testing.assert_allclose(s.weights["b0"], [(1 - a) * 1.6 + a * 3.0], rtol=1e-6)
    assert s.version == 3


def test_fedasync_rejects_beyond_max_staleness_and_changes_nothing():
    s = FedAsync(w(0.0), alpha=0.5, max_staleness=1)
    s.apply(contrib(1.0, base=0))
    s.apply(contrib(1.0, base=1))
    before = {k: v.copy() for k, v in s.weights.items()}
    with pytest.raises(UpdateRejected) as info:
        s.apply(contrib(1.0, base=0))
    assert info.value.reason == "too_stale"
    assert info.value.staleness == 2
    assert s.version == 2
    for k in before:
        np.testing.assert_array_equal(s.weights[k], before[k])


def test_future_base_version_is_rejected():
    for s in (FedAsync(w(0.0)), FedBuff(w(0.0)), FedAvg(w(0.0))):
        with pytest.raises(UpdateRejected) as info:
            s.apply(contrib(1.0, base=5))
        assert info.value.reason == "future_version"


def test_fedbuff_waits_for_k_then_applies_weighted_scaled_mean():
    s = FedBuff(w(1.0), k=3, server_lr=0.5)
    assert not s.apply(contrib(2.0, base=0, n=1))
    assert not s.apply(contrib(4.0, base=0, n=3))
    assert s.pending == 2
    np.testing.assert_array_equal(s.weights["w0"], [1.0, 1.0])  # nothing yet
    assert s.apply(contrib(-2.0, base=0, n=4))
    # mean = (1*2 + 3*4 + 4*(-2)) / 8 = 0.75; x = 1 + 0.5 * 0.75
    np.testing.assert_allclose(s.weights["w0"], [1.375, 1.375])
    assert s.version == 1
    assert s.pending == 0


def test_fedbuff_scales_stale_deltas_by_inverse_sqrt():
    s = FedBuff(w(0.0), k=1)
    s.apply(contrib(1.0, base=0))  # version 1, x = 1
    s.apply(contrib(1.0, base=1))  # version 2, x = 2
    s.apply(contrib(2.0, base=0))  # staleness 2: 2 / sqrt(3)
    np.testing.assert_allclose(s.weights["b0"], [2.0 + 2.0 / np.sqrt(3.0)], rtol=1e-6)


def test_fedbuff_rejects_too_stale():
    s = FedBuff(w(0.0), k=1, max_staleness=0)
    s.apply(contrib(1.0, base=0))
    with pytest.raises(UpdateRejected, match="versions old"):
        s.apply(contrib(1.0, base=0))
    assert s.pending == 0 and s.version == 1


def test_fedbuff_flush_applies_partial_buffer():
    s = FedBuff(w(0.0), k=10)
    s.apply(contrib(2.0, base=0))
    assert s.flush()
    np.testing.assert_allclose(s.weights["w0"], [2.0, 2.0])
    assert not s.flush()  # nothing pending


def test_fedavg_round_is_sample_weighted_mean():
    s = FedAvg(w(0.0), clients_per_round=2)
    assert not s.apply(contrib(1.0, base=0, n=1, device="a"))
    assert s.apply(contrib(4.0, base=0, n=2, device="b"))
    np.testing.assert_allclose(s.weights["w0"], [3.0, 3.0])  # (1 + 8) / 3
    assert s.version == 1


def test_fedavg_rejects_late_and_duplicate_updates():
    s = FedAvg(w(0.0), clients_per_round=3)
    s.apply(contrib(1.0, base=0, device="a"))
    with pytest.raises(UpdateRejected) as dup:
        s.apply(contrib(1.0, base=0, device="a"))
    assert dup.value.reason == "duplicate_in_round"
    assert s.flush()  # the deadline closes the round with what arrived
    with pytest.raises(UpdateRejected) as late:
        s.apply(contrib(1.0, base=0, device="b"))
    assert late.value.reason == "late_for_round"
    np.testing.assert_allclose(s.weights["w0"], [1.0, 1.0])


def test_make_strategy_by_name_and_errors():
    assert isinstance(make_strategy("fedbuff", w(0.0), k=2), FedBuff)
    assert make_strategy("fedasync", w(0.0), 7).version == 7
    with pytest.raises(ConfigError, match="unknown strategy"):
        make_strategy("fedsgd", w(0.0))
    with pytest.raises(ConfigError):
        make_strategy("fedavg", w(0.0), k=3)
    with pytest.raises(ConfigError):
        make_strategy("fedasync", w(0.0), alpha=1.5)


def test_strategy_does_not_alias_callers_weights():
    start = w(1.0)
    s = FedAsync(start, alpha=1.0, staleness="constant")
    s.apply(contrib(1.0, base=0))
    np.testing.assert_array_equal(start["w0"], [1.0, 1.0])


@given(st.sampled_from(["constant", "poly", "hinge"]), st.floats(0, 1e6), st.floats(0, 1e6))
def test_staleness_spec_is_exact_where_str_rounds(kind, a, b):
    s = Staleness(kind, a, b)
    back = Staleness.parse(s.spec())  # what a checkpoint stores
    assert back.spec() == s.spec()
    assert [back(d) for d in range(12)] == [s(d) for d in range(12)]
