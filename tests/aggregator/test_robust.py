"""Defences (norm bound, trimmed mean, the Robust wrapper) against hand-worked numbers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aggregator.strategies import (
    Contribution,
    FedAsync,
    FedAvg,
    FedBuff,
    NormBound,
    Robust,
    TrimmedFedBuff,
    make_strategy,
)
from aggregator.strategies.trimmed import trimmed_mean
from fedmq.errors import ConfigError, UpdateRejected


def w(a: float, b: float = 0.0) -> dict[str, np.ndarray]:
    return {"w0": np.array([a, b], np.float32)}


def contrib(a: float, b: float = 0.0, base: int = 0, n: int = 1, device: str = "d") -> Contribution:
    return Contribution(delta=w(a, b), base_version=base, num_samples=n, device=device)


def bound_with(norms: list[float], factor: float = 3.0, mode: str = "reject") -> NormBound:
    nb = NormBound(factor, mode)
    for x in norms:
        nb.record(x)
    return nb


def test_no_bound_until_warmup_then_factor_times_median():
    nb = bound_with([1.0, 2.0, 3.0, 100.0])
    assert nb.bound() is None  # 4 < warmup 5: anything goes
    assert nb.screen(contrib(1e6))[1] == 1e6
    nb.record(4.0)
    assert nb.bound() == pytest.approx(9.0)  # 3 x median(1, 2, 3, 4, 100)


def test_window_keeps_only_the_most_recent_devices():
    nb = NormBound(3.0, window=5, warmup=5)
    for x in [100.0] * 5 + [1.0] * 2:
        nb.record(x)
    assert nb.bound() == pytest.approx(300.0)  # 100 100 100 1 1 -> median 100
    nb.record(1.0)
    assert nb.bound() == pytest.approx(3.0)  # 100 100 1 1 1 -> median 1


def test_window_holds_one_norm_per_device_so_a_fast_device_cannot_set_the_median():
    nb = NormBound(3.0, warmup=3)
    for device, x in [("slow1", 10.0), ("slow2", 12.0), ("fast", 1.0)]:
        nb.record(x, device)
    for _ in range(20):
        nb.record(0.5, "fast")  # its latest norm replaces its earlier one
    assert nb.bound() == pytest.approx(30.0)  # 3 x median(10, 12, 0.5)


def test_reject_mode_refuses_above_the_bound_and_passes_the_bound_itself():
    nb = bound_with([1.0, 2.0, 3.0, 4.0, 100.0])  # bound 9
    c = contrib(6.0, 8.0)  # norm 10
    with pytest.raises(UpdateRejected) as info:
        nb.screen(c)
    assert info.value.reason == "norm_bound"
    assert info.value.fields["norm"] == pytest.approx(10.0)
    assert info.value.fields["bound"] == pytest.approx(9.0)
    same, norm = nb.screen(contrib(0.0, 9.0))
    assert norm == pytest.approx(9.0) and same.delta["w0"][1] == 9.0


def test_clip_mode_scales_the_delta_onto_the_bound():
    nb = bound_with([2.0] * 5, factor=2.5, mode="clip")  # bound 5
    clipped, norm = nb.screen(contrib(6.0, 8.0))  # norm 10 -> x 0.5
    np.testing.assert_allclose(clipped.delta["w0"], [3.0, 4.0])
    assert norm == pytest.approx(5.0)  # the window learns the clipped norm, not 10
    assert clipped.base_version == 0 and clipped.device == "d"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("norm_bound", [None, NormBound()])
def test_non_finite_delta_is_refused_and_changes_nothing(bad, norm_bound):
    s = Robust(FedBuff(w(1.0), k=1), norm_bound)
    with pytest.raises(UpdateRejected) as info:
        s.apply(contrib(1.0, bad))
    assert info.value.reason == "non_finite"
    assert s.version == 0 and s.pending == 0
    np.testing.assert_array_equal(s.weights["w0"], [1.0, 0.0])


def test_only_updates_the_inner_strategy_accepted_enter_the_window():
    nb = NormBound(3.0, warmup=1, abs_factor=10.0)
    s = Robust(FedBuff(w(0.0), k=1, max_staleness=0), nb)
    s.apply(contrib(3.0, 4.0))  # norm 5, version 1
    assert nb.bound() == pytest.approx(15.0)
    with pytest.raises(UpdateRejected, match="versions old"):
        s.apply(contrib(0.0, 1.0, base=0))  # too stale: not recorded
    with pytest.raises(UpdateRejected) as info:
        s.apply(contrib(0.0, 16.0, base=1))  # above 15: not recorded
    assert info.value.reason == "norm_bound"
    assert nb.bound() == pytest.approx(15.0)


def test_trimmed_mean_drops_the_extremes_per_coordinate():
    stack = np.array([[1, 10], [2, -10], [3, 0], [100, 0], [-50, 5]], np.float32)
    # column 0 sorted: -50 1 2 3 100 -> 1 2 3; column 1: -10 0 0 5 10 -> 0 0 5
    np.testing.assert_allclose(trimmed_mean(stack, 0.2), [2.0, 5 / 3], rtol=1e-6)


@pytest.mark.parametrize(
    ("values", "trim", "expected"),
    [
        ([1.0, 5.0], 0.4, 3.0),  # floor(0.8) = 0: nothing to drop
        ([1.0, 5.0, 100.0], 0.45, 5.0),  # floor(1.35) = 1: the median
        ([4.0], 0.2, 4.0),
    ],
)
def test_trimmed_mean_of_small_buffers_keeps_at_least_one(values, trim, expected):
    assert trimmed_mean(np.array(values)[:, None], trim)[0] == pytest.approx(expected)


def brute_trimmed_mean(stack: np.ndarray, trim: float, sent: np.ndarray) -> np.ndarray:
    """The rule of aggregator.strategies.trimmed, one coordinate at a time."""
    n = stack.shape[0]
    out = np.zeros(stack.shape[1:])
    for j in np.ndindex(stack.shape[1:]):
        values = sorted(stack[(slice(None), *j)][sent[(slice(None), *j)]])
        m = len(values)
        if m:
            cut = min(int(trim * m), (m - 1) // 2)
            out[j] = np.mean(values[cut : m - cut]) * m / n
    return out


@settings(deadline=None)
@given(
    stack=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 12), st.integers(1, 6)),
        elements=st.floats(-1e3, 1e3, width=32),
    ),
    trim=st.sampled_from([0.0, 0.1, 0.2, 0.34, 0.45]),
    seed=st.integers(0, 2**16),
)
def test_a_sparse_trimmed_mean_trims_among_the_senders_of_each_coordinate(stack, trim, seed):
    sent = np.random.default_rng(seed).random(stack.shape) < 0.4
    got = trimmed_mean(stack, trim, sent)
    np.testing.assert_allclose(got, brute_trimmed_mean(stack, trim, sent), rtol=1e-6, atol=1e-6)
    # every delta dense: the trimmed mean; no trim: the plain mean, unsent counted as 0
    everything = np.ones(stack.shape, bool)
    np.testing.assert_allclose(trimmed_mean(stack, trim, everything), trimmed_mean(stack, trim))
    np.testing.assert_allclose(
        trimmed_mean(stack, 0.0, sent), np.where(sent, stack, 0).mean(axis=0), rtol=1e-5, atol=1e-4
    )


def test_a_coordinate_one_topk_device_sent_is_not_cut_as_an_extreme():
    s = TrimmedFedBuff(w(0.0), k=5, trim=0.2)
    s.apply(Contribution(delta=w(4.0, 0.0), base_version=0, num_samples=1, sparse=True))
    for b in (1.0, 2.0, 3.0, 100.0):
        s.apply(Contribution(delta=w(0.0, b), base_version=0, num_samples=1, sparse=True))
    # w0[0]: one sender of five -> 4 / 5 (a dense vote would sort 0 0 0 0 4 and keep 0);
    # w0[1]: four senders, cut floor(0.8) = 0 -> (1 + 2 + 3 + 100) / 5
    np.testing.assert_allclose(s.weights["w0"], [0.8, 106 / 5], rtol=1e-6)


def test_a_dense_delta_votes_on_every_coordinate_beside_sparse_ones():
    s = TrimmedFedBuff(w(0.0), k=5, trim=0.2)
    for a in (1.0, 2.0, 3.0):
        s.apply(Contribution(delta=w(a, 0.0), base_version=0, num_samples=1, sparse=True))
    s.apply(contrib(50.0, 7.0))  # dense: its 50 is one of four votes, its 7 the only one
    s.apply(contrib(-9.0, 0.0))  # dense: its 0 on w0[1] is a vote for 0
    # w0[0]: -9 1 2 3 50, cut 1 -> 2; w0[1]: senders 7 and 0, cut 0 -> (7 / 2) * 2 / 5
    np.testing.assert_allclose(s.weights["w0"], [2.0, 1.4], rtol=1e-6)


def test_trimmed_fedbuff_is_unweighted_and_trims():
    s = TrimmedFedBuff(w(1.0), k=5, trim=0.2, server_lr=0.5)
    for a, b, n in [(1, 10, 1), (2, -10, 1000), (3, 0, 1), (100, 0, 1), (-50, 5, 1)]:
        s.apply(contrib(a, b, n=n))
    # trimmed means 2 and 5/3 (the 1000-sample claim carries no extra weight)
    np.testing.assert_allclose(s.weights["w0"], [1 + 0.5 * 2, 0.5 * 5 / 3], rtol=1e-6)
    assert s.version == 1 and s.pending == 0
    assert s.params() == {
        "k": 5,
        "server_lr": 0.5,
        "max_staleness": 64,
        "server_opt": "none",
        "trim": 0.2,
    }


def test_trimmed_fedbuff_scales_staleness_before_trimming():
    s = TrimmedFedBuff(w(0.0), version=3, k=3, trim=0.34)
    s.apply(contrib(4.0, base=0))  # staleness 3: 4 / sqrt(4) = 2
    s.apply(contrib(1.0, base=3))
    s.apply(contrib(9.0, base=3))
    # sorted 1, 2, 9 -> keep 2 (unscaled it would have been 4)
    np.testing.assert_allclose(s.weights["w0"], [2.0, 0.0])


def test_wrapper_delegates_and_clips_before_the_inner_strategy():
    nb = bound_with([2.0] * 5, factor=2.5, mode="clip")  # bound 5
    s = Robust(FedBuff(w(1.0), version=4, k=2), nb)
    assert s.name == "fedbuff" and s.version == 4 and s.weights["w0"][0] == 1.0
    assert s.staleness(contrib(0.0, base=2)) == 2
    assert not s.apply(contrib(6.0, 8.0, base=4))  # clipped to (3, 4)
    assert s.pending == 1
    assert s.flush()
    np.testing.assert_allclose(s.weights["w0"], [4.0, 4.0])
    assert s.version == 5 and s.pending == 0


def test_make_strategy_without_defence_is_unchanged():
    s = make_strategy("fedbuff", w(0.0), k=2)
    assert type(s) is FedBuff
    assert s.params() == {"k": 2, "server_lr": 1.0, "max_staleness": 64, "server_opt": "none"}


@pytest.mark.parametrize(
    ("name", "inner"), [("fedbuff", TrimmedFedBuff), ("fedasync", FedAsync), ("fedavg", FedAvg)]
)
def test_make_strategy_with_defence_wraps_and_reports_its_settings(name, inner):
    s = make_strategy(name, w(0.0), 3, defence=True)
    assert isinstance(s, Robust) and type(s.inner) is inner
    assert s.name == name and s.version == 3
    p = s.params()
    assert p["defence"] is True and p["norm_factor"] == 4.0 and p["norm_mode"] == "reject"
    assert p.get("trim") == (0.2 if name == "fedbuff" else None)
    assert all(v is None or isinstance(v, bool | int | float | str) for v in p.values())


def test_make_strategy_defence_settings():
    s = make_strategy("fedbuff", w(0.0), defence=True, trim=0, norm_mode="off", k=4)
    assert type(s.inner) is FedBuff and s.norm_bound is None
    assert s.params()["k"] == 4 and "norm_factor" not in s.params()
    s = make_strategy("fedasync", w(0.0), defence=True, norm_factor=5, norm_mode="clip")
    assert s.norm_bound.factor == 5.0 and s.norm_bound.mode == "clip"


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("fedbuff", {"trim": 0.2}),  # settings without defence=True
        ("fedasync", {"defence": True, "trim": 0.2}),
        ("fedbuff", {"defence": True, "trim": 0.5}),
        ("fedbuff", {"defence": True, "norm_factor": 1.0}),
        ("fedbuff", {"defence": True, "norm_mode": "drop"}),
        ("fedbuff", {"defence": True, "alpha": 0.5}),
    ],
)
def test_make_strategy_refuses_bad_defence_settings(name, kw):
    with pytest.raises(ConfigError):
        make_strategy(name, w(0.0), **kw)
