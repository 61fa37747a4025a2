"""An agent's side of client-level DP: the policy it accepts, and its RNG per device."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.checks import MAX_DP_CLIP, MAX_DP_NOISE, Limits, check_hyper, rng_for
from fedmq.errors import FedmqError
from fedmq.training import Hyper

LIMITS = Limits(max_epochs=50, max_batch=1024)


@pytest.mark.parametrize(
    "hyper",
    [
        Hyper(dp_clip=1.0, dp_noise=MAX_DP_NOISE * 1.01),
        Hyper(dp_clip=MAX_DP_CLIP * 2, dp_noise=1.0),
    ],
)
def test_a_policy_outside_the_sane_limits_is_refused(hyper: Hyper) -> None:
    with pytest.raises(FedmqError) as info:
        check_hyper(hyper, LIMITS)
    assert info.value.reason == "dp_policy"
    assert "noise" in info.value.message and "\n" not in info.value.message


@pytest.mark.parametrize(
    "hyper",
    [
        Hyper(),
        Hyper(dp_clip=1.0, dp_noise=1.0),
        Hyper(dp_clip=1.0, dp_noise=MAX_DP_NOISE),
        Hyper(dp_clip=1e6),
    ],
)
def test_sane_policies_pass(hyper: Hyper) -> None:
    check_hyper(hyper, LIMITS)


def test_a_seeded_rng_is_per_device_and_reproducible() -> None:
    a1, a2, b = rng_for(7, "pi-001"), rng_for(7, "pi-001"), rng_for(7, "pi-002")
    x1, x2, y = a1.normal(size=64), a2.normal(size=64), b.normal(size=64)
    np.testing.assert_array_equal(x1, x2)
    assert not np.allclose(x1, y)  # same seed, other device: independent noise


def test_an_unseeded_rng_is_not_predictable() -> None:
    assert not np.array_equal(rng_for(None, "d").normal(size=8), rng_for(None, "d").normal(size=8))
