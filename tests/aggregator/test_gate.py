"""Defences from the first update: the absolute norm bound, the claim cap, the model gate."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.strategies import (
    ClaimCap,
    Contribution,
    FedAsync,
    FedAvg,
    FedBuff,
    ModelGate,
    NormBound,
    Robust,
    make_strategy,
)
from fedmq.errors import ConfigError, UpdateRejected


def w(a: float, b: float = 0.0) -> dict[str, np.ndarray]:
    return {"w0": np.array([a, b], np.float32)}


def contrib(a: float, b: float = 0.0, *, base: int = 0, n: int = 1, device: str = "d"):
    return Contribution(delta=w(a, b), base_version=base, num_samples=n, device=device)


# -- the absolute bound ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["fedasync", "fedbuff", "fedavg"])
def test_a_new_fleet_refuses_a_huge_first_update(name):
    s = make_strategy(name, w(3.0, 4.0), defence=True)  # model norm 5
    with pytest.raises(UpdateRejected) as info:
        s.apply(contrib(1e30, device="evil"))
    assert info.value.reason == "norm_bound"
    assert "model norm" in info.value.message
    assert s.version == 0 and s.pending == 0
    np.testing.assert_array_equal(s.weights["w0"], [3.0, 4.0])


def test_the_absolute_bound_is_relative_to_the_model_with_a_floor():
    nb = NormBound(abs_factor=4.0, abs_floor=1.0)
    assert nb.bound(5.0) == pytest.approx(20.0)
    assert nb.bound(0.01) == pytest.approx(4.0)  # a model near zero keeps the floor
    assert nb.bound() is None  # no model, no absolute bound


def test_the_absolute_bound_lets_honest_steps_through_and_gives_way_to_the_median():
    nb = NormBound(factor=3.0, warmup=2, abs_factor=4.0)
    s = Robust(FedAsync(w(3.0, 4.0), alpha=1.0, staleness="constant"), nb)
    s.apply(contrib(0.0, 19.0, device="a"))  # 19 <= 4 x 5: accepted
    s.apply(contrib(0.0, 1.0, base=1, device="b"))
    assert nb.warm()
    assert nb.bound(1e9) == pytest.approx(
        30.0
    )  # 3 x median(19, 1); the model norm no longer counts


def test_a_fleet_of_three_keeps_the_absolute_bound():
    s = make_strategy("fedbuff", w(3.0, 4.0), defence=True, k=1, trim=0.0)
    for i, dev in enumerate(["a", "b", "c"] * 3):
        s.apply(contrib(0.1, base=i, device=dev))
    with pytest.raises(UpdateRejected, match="model norm"):
        s.apply(contrib(1e6, base=s.version, device="c"))


@pytest.mark.parametrize(
    "kwargs", [{"abs_factor": 0.0}, {"abs_floor": -1.0}, {"abs_factor": np.inf}]
)
def test_bad_absolute_bound_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        NormBound(**kwargs)


# -- the claim cap --------------------------------------------------------------------


def test_a_claim_is_capped_at_a_multiple_of_the_other_devices_median():
    cap = ClaimCap(10.0)
    for dev, n in [("a", 100), ("b", 300), ("c", 200)]:
        cap.record(contrib(0.0, n=n, device=dev))
    assert cap.cap("evil") == 2000  # 10 x median(100, 300, 200)
    assert cap.screen(contrib(0.0, n=2**31 - 1, device="evil")).num_samples == 2000
    assert cap.screen(contrib(0.0, n=150, device="evil")).num_samples == 150
    cap.record(contrib(0.0, n=2**31 - 1, device="evil"))
    # For "a" the others are 300, 200 and the liar: one huge claim moves the median only one place.
    assert cap.cap("a") == 3000


def test_a_lone_device_has_nothing_to_outweigh():
    cap = ClaimCap(10.0)
    assert cap.cap("a") is None
    cap.record(contrib(0.0, n=7, device="a"))
    assert cap.cap("a") is None  # its own claim never caps itself


def test_a_huge_claim_does_not_take_fedbuffs_weight():
    s = make_strategy("fedbuff", w(0.0), defence=True, k=3, trim=0.0)
    s.apply(contrib(1.0, n=100, device="a"))  # buffered; claims are recorded
    s.apply(contrib(1.0, n=100, device="b"))
    s.apply(contrib(-1.0, n=2**31 - 1, device="evil"))  # capped at 10 x 100
    # weighted mean (100 + 100 - 1000) / 1200 = -2/3, not ~-1
    np.testing.assert_allclose(s.weights["w0"][0], -2 / 3, rtol=1e-5)


def test_a_huge_claim_does_not_take_fedavgs_weight():
    s = make_strategy("fedavg", w(0.0), defence=True, clients_per_round=3)
    s.apply(contrib(1.0, n=100, device="a"))
    s.apply(contrib(1.0, n=100, device="b"))
    assert s.apply(contrib(-1.0, n=2**31 - 1, device="evil"))  # the round closes, capped
    # the round's weighted mean (100 + 100 - 1000) / 1200 = -2/3, not ~-1
    np.testing.assert_allclose(s.weights["w0"][0], -2 / 3, rtol=1e-5)


# -- the model gate -------------------------------------------------------------------


def test_the_gate_refuses_a_diverged_candidate_and_keeps_the_last_good_model():
    s = FedBuff(w(1.0), k=2)
    s.gate = ModelGate(max_weight=100.0)
    s.apply(contrib(1.0, device="a"))
    with pytest.raises(UpdateRejected) as info:
        s.apply(contrib(1000.0, device="b"))
    assert info.value.reason == "model_rejected"
    assert s.version == 0 and s.pending == 0  # the buffer went with the bad candidate
    np.testing.assert_array_equal(s.weights["w0"], [1.0, 0.0])
    assert not s.apply(contrib(1.0, device="a"))
    assert s.apply(contrib(1.0, device="c"))  # training goes on from the last good model
    assert s.version == 1
    np.testing.assert_array_equal(s.weights["w0"], [2.0, 0.0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e30])
def test_the_gate_refuses_non_finite_and_huge_weights(bad):
    s = FedAsync(w(1.0), alpha=1.0, staleness="constant")
    s.gate = ModelGate()
    with pytest.raises(UpdateRejected, match="refused"):
        s.apply(contrib(bad))
    assert s.version == 0


def test_the_gate_refuses_an_exploding_evaluation_loss():
    losses = iter([1.0, 1.5, 50.0, 1.2])
    gate = ModelGate(evaluate=lambda weights: next(losses), loss_factor=2.0, loss_margin=1.0)
    s = FedAvg(w(0.0), clients_per_round=1)
    s.gate = gate
    s.apply(contrib(0.1, device="a"))  # loss 1.0: the first good one
    s.apply(contrib(0.1, base=1, device="a"))  # 1.5 <= 2 x 1.0 + 1
    with pytest.raises(UpdateRejected, match="exploded"):
        s.apply(contrib(0.1, base=2, device="a"))  # 50 > 2 x 1.5 + 1
    assert s.version == 2 and s.pending == 0
    s.apply(contrib(0.1, base=2, device="a"))
    assert s.version == 3 and gate.last_good_loss == 1.2


def test_a_robust_strategy_passes_its_gate_to_the_inner_one():
    s = make_strategy("fedasync", w(1.0), defence=True)
    gate = ModelGate(max_weight=1.5)
    s.gate = gate
    assert s.inner.gate is gate
    with pytest.raises(UpdateRejected) as info:
        s.apply(contrib(3.0))  # within the norm bound (4 x max(1, 1)), but |w| > 1.5
    assert info.value.reason == "model_rejected"
    assert s.version == 0


@pytest.mark.parametrize(
    "kwargs", [{"max_weight": 0.0}, {"loss_factor": 0.5}, {"loss_margin": -1.0}]
)
def test_bad_gate_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        ModelGate(**kwargs)
