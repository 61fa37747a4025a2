"""Server learning-rate schedules: their factors, their specs, what each strategy does with them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.config import StrategyConfig, strategy_params
from aggregator.strategies import Contribution, make_strategy
from aggregator.strategies.schedule import Schedule
from fedmq.errors import ConfigError

W = {"w": np.zeros(2, np.float32)}
D = {"w": np.array([1.0, -1.0], np.float32)}

floats01 = st.floats(1e-6, 1.0)  # MIN_FLOOR up to 1
schedules = st.one_of(
    st.just(Schedule()),
    st.builds(Schedule, st.just("step"), st.integers(1, 10_000), st.floats(1e-6, 1.0), floats01),
    st.builds(Schedule, st.just("cosine"), st.integers(1, 10_000), floor=floats01),
    st.builds(Schedule, st.just("invsqrt"), st.integers(1, 10_000), floor=floats01),
)


@given(schedules, st.integers(0, 10**7), st.integers(0, 10**7))
def test_a_factor_is_in_0_1_never_rises_and_its_spec_round_trips(s, t1, t2):
    lo, hi = sorted((t1, t2))
    assert 0 < s.factor(hi) <= s.factor(lo) <= 1
    again = Schedule.parse(s.spec())
    assert again == s and again.factor(hi) == s.factor(hi)


@pytest.mark.parametrize(
    ("spec", "at"),
    [
        ("constant", {0: 1.0, 10**6: 1.0}),
        ("step:10,0.5", {0: 1.0, 9: 1.0, 10: 0.5, 25: 0.25, 40: 0.1, 10**7: 0.1}),
        ("step:10,0.5,0.01", {25: 0.25, 60: 0.015625, 70: 0.01, 10**9: 0.01}),
        ("cosine:100", {0: 1.0, 50: 0.55, 100: 0.1, 5000: 0.1}),
        ("cosine:100,0.2", {0: 1.0, 50: 0.6, 100: 0.2}),
        ("invsqrt:100", {50: 1.0, 100: 1.0, 400: 0.5, 10_000: 0.1, 10**7: 0.1}),
        ("invsqrt:100,0.01", {400: 0.5, 10_000: 0.1, 10**6: 0.01, 10**9: 0.01}),
    ],
)
def test_each_schedule_gives_its_documented_factors(spec, at):
    s = Schedule.parse(spec)
    for version, want in at.items():
        assert math.isclose(s.factor(version), want, rel_tol=1e-12), (spec, version)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "linear:10",
        "constant:1",
        "step:10",
        "step:10,0.5,0",
        "step:10,0.5,0.1,1",
        "step:0,0.5",
        "step:10,0",
        "step:10,1.5",
        "step:2.5,0.5",
        "cosine",
        "cosine:10,0",
        "cosine:10,nan",
        "cosine:10,0.1,3",
        "invsqrt:-1",
        "invsqrt:10,0",
        "invsqrt:10,0.5,0.1",
        "step:10,0.5,1e-320",
        "invsqrt:",
        7,
    ],
)
def test_a_bad_schedule_is_a_one_line_config_error_naming_the_setting(spec):
    with pytest.raises(ConfigError) as exc:
        Schedule.parse(spec)
    assert "\n" not in str(exc.value) and "server_lr_schedule" in str(exc.value)


@pytest.mark.parametrize(
    "kw",
    [
        dict(kind="step", n=2.5, g=0.5),
        dict(kind="step", n=True, g=0.5),
        dict(kind="cosine", n=10, g=0.5),
        dict(kind="invsqrt", n=10, g=0.5),
        dict(kind="constant", n=5),
        dict(kind="constant", floor=0.5),
    ],
)
def test_a_schedule_holds_only_the_parameters_its_kind_has(kw):
    with pytest.raises(ConfigError):
        Schedule(**kw)


def one(version: int = 0, samples: int = 1) -> Contribution:
    return Contribution(D, version, samples, device="d")


def test_fedbuff_steps_shrink_as_the_schedule_says():
    s = make_strategy("fedbuff", W, k=1, server_lr=0.5, server_lr_schedule="step:1,0.5,0.25")
    seen = []
    for _ in range(4):
        before = s.weights["w"].copy()
        s.apply(one(s.version))
        seen.append(float(s.weights["w"][0] - before[0]))
    assert seen == [0.5, 0.25, 0.125, 0.125]  # the floor 0.25 of the factor holds it
    assert s.params()["server_lr_schedule"] == "step:1,0.5,0.25"


def test_the_schedule_scales_a_server_optimizers_step_not_its_memory():
    kw = dict(k=1, server_opt="momentum", server_beta1=0.5)
    plain = make_strategy("fedbuff", W, **kw)
    scheduled = make_strategy("fedbuff", W, **kw, server_lr_schedule="step:1,0.5")
    for s in (plain, scheduled):
        s.apply(one(0))
        s.apply(one(1))
    # m1 = d, m2 = 1.5 d: plain steps d then 1.5 d; scheduled d then 0.5 * 1.5 d.
    assert plain.weights["w"][0] == pytest.approx(2.5)
    assert scheduled.weights["w"][0] == pytest.approx(1.75)
    np.testing.assert_array_equal(plain.opt.m["w"], scheduled.opt.m["w"])


def test_fedasync_mixing_weight_follows_the_schedule():
    kw = dict(alpha=0.8, staleness="constant", server_lr_schedule="step:1,0.5,0.01")
    s = make_strategy("fedasync", W, **kw)
    for version, want in [(0, 0.8), (1, 0.4), (2, 0.2)]:
        assert s.version == version and s.mixing(0) == pytest.approx(want)
        s.apply(one(s.version))
    # Each update trains on the current version: x <- x + a d, a = 0.8, 0.4, 0.2.
    assert s.weights["w"][0] == pytest.approx(0.8 + 0.4 + 0.2)


def test_fedavg_server_step_follows_the_schedule():
    s = make_strategy("fedavg", W, clients_per_round=1, server_lr_schedule="invsqrt:1")
    for _ in range(4):
        s.apply(one(s.version))
    # factors at versions 0..3: 1, 1, sqrt(1/2), sqrt(1/3)
    assert s.weights["w"][0] == pytest.approx(2 + 0.5**0.5 + (1 / 3) ** 0.5)


def test_no_schedule_is_no_parameter_so_earlier_checkpoints_and_statuses_read_the_same():
    for name in ("fedasync", "fedbuff", "fedavg"):
        assert "server_lr_schedule" not in make_strategy(name, W).params()
    assert StrategyConfig.server_lr_schedule == "constant"


@pytest.mark.parametrize("name", ["fedasync", "fedbuff", "fedavg"])
def test_every_strategy_takes_the_setting_from_a_config(name):
    params = strategy_params(name, True, {"server_lr_schedule": "cosine:500"})
    s = make_strategy(name, W, defence=True, **params)
    assert s.params()["server_lr_schedule"] == "cosine:500,0.1"
    with pytest.raises(ConfigError):
        make_strategy(name, W, server_lr_schedule="cosine:0")
