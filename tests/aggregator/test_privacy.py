"""aggregator.privacy: ε grows with each update, matches dp-accounting, and survives a restart."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant

from aggregator.privacy import PrivacyLedger
from fedmq.errors import ConfigError


def reference(z: float, n: int, delta: float) -> float:
    acc = RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(z), n)
    return acc.get_epsilon(delta)


def test_each_update_is_one_gaussian_mechanism_on_its_device() -> None:
    p = PrivacyLedger(delta=1e-5)
    for _ in range(10):
        p.spend("a", 1.0)
    p.spend("b", 1.0)
    assert p.epsilon("a") == pytest.approx(reference(1.0, 10, 1e-5))
    assert p.epsilon("b") == pytest.approx(reference(1.0, 1, 1e-5))
    assert p.epsilon("a") > p.epsilon("b")
    assert p.fleet_epsilon() == p.epsilon("a")  # the worst-off device
    assert p.epsilon("never") is None


def test_more_noise_spends_less() -> None:
    quiet, loud = PrivacyLedger(), PrivacyLedger()
    quiet.spend("a", 0.5, count=5)
    loud.spend("a", 2.0, count=5)
    assert loud.epsilon("a") < quiet.epsilon("a")


def test_no_noise_is_no_privacy() -> None:
    p = PrivacyLedger()
    p.spend("a", 1.0)
    p.spend("a", 0.0)  # one noiseless release
    assert math.isinf(p.epsilon("a"))


def test_noisy_statistics_count_in_the_same_budget() -> None:
    p = PrivacyLedger()
    p.spend("a", 1.0, count=3)
    alone = p.epsilon("a")
    p.spend("a", 4.0)  # statistics published with their own noise
    assert p.epsilon("a") > alone


def test_the_spend_survives_a_restart() -> None:
    p = PrivacyLedger()
    p.spend("a", 1.0, count=7)
    p.spend("a", 3.0)
    q = PrivacyLedger()
    q.load(p.state())
    assert q.epsilon("a") == p.epsilon("a")


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5])
def test_delta_must_be_a_probability(delta: float) -> None:
    with pytest.raises(ConfigError):
        PrivacyLedger(delta)
