"""The norm bound under a DP policy: honest noised deltas pass at any size, oversized fail.

The devices' own noise (``fedmq.training``) makes the honest deltas here, so the test
checks the bound against what agents really send.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.intake import Intake
from aggregator.ledger import Ledger
from aggregator.strategies import Contribution, NormBound, Robust, TrimmedFedBuff, make_strategy
from aggregator.strategies.dpbound import ENCODING_SLACK, DpBound
from fedmq.errors import ConfigError, UpdateRejected
from fedmq.featurestats import FeatureStats
from fedmq.feedback import ErrorFeedback
from fedmq.model import Arch, global_norm, init_weights
from fedmq.preprocess import Moments
from fedmq.topics import Topics
from fedmq.training import Hyper, _clip_and_noise
from fedmq.wire import Update


def noised(dim: int, clip: float, z: float, seed: int, raw_norm: float = 1.0) -> dict:
    """What a device sends: a random delta of ``raw_norm``, clipped to C, noised with z·C."""
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=dim).astype(np.float32)
    raw *= np.float32(raw_norm / np.linalg.norm(raw))
    delta, _ = _clip_and_noise({"w": raw}, Hyper(dp_clip=clip, dp_noise=z), rng)
    return delta


@settings(max_examples=200, deadline=None)
@given(
    dim=st.integers(1, 50_000),
    clip=st.floats(1e-3, 1e3),
    z=st.floats(0.0, 10.0),
    raw=st.floats(1e-4, 1e4),
    seed=st.integers(0, 2**32 - 1),
)
def test_an_honest_noised_delta_is_within_the_bound_at_any_size(dim, clip, z, raw, seed):
    delta = noised(dim, clip, z, seed, raw_norm=raw * clip)
    assert global_norm(delta) <= DpBound(clip, z).bound(dim)


@pytest.mark.parametrize("dim", [1, 10, 2410, 100_000])
@pytest.mark.parametrize("z", [0.0, 0.5, 1.0, 2.0])
def test_the_bound_is_tight_enough_that_ten_times_an_honest_update_fails(dim, z):
    clip = 0.5
    b = DpBound(clip, z).bound(dim)
    typical = clip * math.sqrt(1 + z * z * dim)  # an honest update's norm, about
    # The tail margin: about 6x at d = 1 (a Gaussian 1e-6 tail is 4.9 sigma; Laurent-Massart
    # says 6), a few percent for a real model.
    assert typical < b < (7 if dim < 1000 else 1.25) * typical
    nb = NormBound(dp_clip=clip, dp_noise=z)
    honest = noised(dim, clip, z, seed=dim)
    assert nb.screen(Contribution(honest, 0, 1, device="d"))[1] == global_norm(honest)
    big = {k: v * np.float32(10 * typical / global_norm(honest)) for k, v in honest.items()}
    with pytest.raises(UpdateRejected) as info:
        nb.screen(Contribution(big, 0, 1, device="d"))
    assert info.value.reason == "norm_bound" and "DP policy" in info.value.message


def test_honest_refusals_are_rarer_than_the_tail_in_many_draws():
    """10⁴ honest draws at the edge (delta exactly C, noise along it) stay under the bound,
    and the largest is still clear of it: the tail is a bound, not a guess."""
    rng = np.random.default_rng(7)
    dim, clip, z = 500, 1.0, 1.0
    c = np.zeros(dim)
    c[0] = clip
    norms = np.linalg.norm(c + rng.normal(0, z * clip, size=(10_000, dim)), axis=1)
    assert norms.max() < DpBound(clip, z).bound(dim) / (1 + ENCODING_SLACK)


@pytest.mark.parametrize("encoding", ["f16", "q8"])
def test_rounding_on_the_wire_with_error_feedback_stays_within_the_slack(encoding):
    arch = Arch("mlp", (64, 32, 10))
    shapes = {k: v.shape for k, v in init_weights(arch, 0).items()}
    feedback, nb = ErrorFeedback(), NormBound(dp_clip=0.5, dp_noise=0.5)
    for seq in range(20):
        rng = np.random.default_rng(seq)
        raw = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
        delta, _ = _clip_and_noise(raw, Hyper(dp_clip=0.5, dp_noise=0.5), rng)
        update = feedback.encode(
            delta, encoding=encoding, device="d", seq=seq, base_version=0, num_samples=1,
            steps=1, loss=None,
        )  # fmt: skip
        nb.screen(Contribution(update.dense_delta(), 0, 1, device="d"))


@pytest.mark.parametrize("z", [0.0, 0.5])
@pytest.mark.parametrize("encoding", ["topk:0.1", "topk:0.25", "q8"])
def test_topk_with_error_feedback_stays_within_the_policy_bound(encoding, z):
    # topk's residual is every unsent coordinate: on top of a clipped delta it would be
    # refused, so under a policy the update is held to the delta's own norm.
    arch = Arch("mlp", (64, 32, 10))
    shapes = {k: v.shape for k, v in init_weights(arch, 0).items()}
    hyper = Hyper(dp_clip=1.0, dp_noise=z)
    base = np.random.default_rng(99)
    direction = {k: base.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    feedback, nb = ErrorFeedback(), NormBound(dp_clip=1.0, dp_noise=z)
    for seq in range(30):  # correlated deltas: the residual grows along them
        rng = np.random.default_rng(seq)
        raw = {k: v + 0.1 * rng.normal(size=v.shape).astype(np.float32)
               for k, v in direction.items()}  # fmt: skip
        delta, _ = _clip_and_noise(raw, hyper, rng)
        update = feedback.encode(
            delta, encoding=encoding, bounded=True, device="d", seq=seq, base_version=0,
            num_samples=1, steps=1, loss=None,
        )  # fmt: skip
        nb.screen(Contribution(update.dense_delta(), 0, 1, device="d"))  # raises if refused
    assert any(float(np.abs(r).sum()) > 0 for r in feedback.residual.values())


def test_trimmed_fedbuff_accepts_noised_updates_and_records_no_noised_norms():
    weights = {"w": np.zeros(2410, np.float32)}
    s = make_strategy("fedbuff", weights, defence=True, k=10)
    assert isinstance(s, Robust) and isinstance(s.inner, TrimmedFedBuff)
    assert s.set_dp(0.5, 1.0) and not s.set_dp(0.5, 1.0)  # a change, then none
    produced = [
        s.apply(Contribution(noised(2410, 0.5, 1.0, i), 0, 10, device=f"d{i}")) for i in range(30)
    ]
    assert sum(produced) == 3 and s.version == 3
    assert s.norm_bound is not None and not s.norm_bound.warm()  # the median saw none
    # The trimmed mean of noise is noise shrunk, not amplified: the model stays near 0.
    assert global_norm(s.weights) < 3 * 0.5 * math.sqrt(2410)
    with pytest.raises(UpdateRejected):
        s.apply(Contribution({"w": 10 * noised(2410, 0.5, 1.0, 99)["w"]}, 3, 10, device="bad"))
    assert s.version == 3 and s.pending == 0


def test_without_a_policy_the_median_bound_is_back():
    nb = NormBound(dp_clip=1.0, dp_noise=1.0)
    assert nb.set_dp(0.0, 0.0) and nb.dp is None
    assert nb.bound(None, 10) is None  # cold, no model: the absolute bound needs one


@pytest.mark.parametrize("clip, noise", [(-1.0, 1.0), (math.nan, 1.0), (1.0, -0.5)])
def test_a_bad_policy_is_a_config_error(clip, noise):
    with pytest.raises(ConfigError):
        DpBound(clip, noise)


ARCH = Arch("mlp", (8, 16, 4))
TOPICS = Topics("f")


def _intake(path: Path, noise: float) -> Intake:
    strategy = make_strategy("fedbuff", init_weights(ARCH, 0), 0, defence=True, k=4)
    ledger = Ledger(path, checkpoint_every=10_000)
    return Intake(TOPICS, ARCH, strategy, ledger=ledger, dp_clip=0.5, noise=noise)


def _send(intake: Intake, device: str, seq: int, z: float, scale: float = 1.0):
    rng = np.random.default_rng([seq, *device.encode()])
    raw = {
        k: rng.normal(size=v.shape).astype(np.float32) for k, v in intake.strategy.weights.items()
    }
    delta, _ = _clip_and_noise(raw, Hyper(dp_clip=0.5, dp_noise=z), rng)
    payload = Update.from_delta(
        {k: scale * v for k, v in delta.items()}, encoding="f32", device=device, seq=seq,
        base_version=intake.strategy.version, num_samples=5, steps=1, loss=0.1,
    ).encode()  # fmt: skip
    return intake.handle(TOPICS.update(device), payload)


def test_the_intake_accepts_noised_updates_with_defences_on_and_counts_the_oversized(tmp_path):
    intake = _intake(tmp_path / "l.sqlite", noise=1.0)
    for seq in range(3):
        for device in "abcd":
            assert _send(intake, device, seq, z=1.0).applied
    assert intake.strategy.version == 3 and intake.counters.accepted == 12
    assert _send(intake, "e", 0, z=1.0, scale=10).reason == "norm_bound"
    assert intake.counters.rejected == {"norm_bound": 1}
    intake.close()


def test_a_policy_changed_at_a_restart_holds_for_later_replays(tmp_path):
    """Run 2 raises the noise: its larger updates are accepted under its policy and must
    replay under it in run 3, not under the first run's checkpoint (nor be refused)."""
    path = tmp_path / "l.sqlite"
    first = _intake(path, noise=0.1)
    assert _send(first, "a", 0, z=0.1).applied
    first.close()
    second = _intake(path, noise=2.0)
    for seq in range(1, 4):
        assert _send(second, "a", seq, z=2.0).applied
    version, weights = second.strategy.version, second.strategy.weights
    second.close()
    third = _intake(path, noise=2.0)  # replays the three under z = 2
    assert third.strategy.version == version
    for k in weights:
        np.testing.assert_array_equal(third.strategy.weights[k], weights[k])
    assert third.counters.accepted == 4
    third.close()


def test_a_delta_re_expressed_for_new_statistics_is_bounded_as_it_was_sent():
    """A device trained on the old standardization; a new device's statistics moved it
    (the features' pooled scale grows ~5x). Re-expressed, its noised delta is far longer
    than the policy allows, but what it sent is within it, and that is what DP bounds."""
    arch = Arch("mlp", (3, 8, 3))
    rng = np.random.default_rng(0)
    xa, xb = rng.standard_normal((100, 3)), rng.standard_normal((60, 3)) + 10.0
    strategy = make_strategy("fedbuff", init_weights(arch, 0), 0, defence=True, k=4)
    intake = Intake(TOPICS, arch, strategy, standardize=True, dp_clip=1.0, noise=1.0)
    for device, x in (("a", xa), ("b", xb)):
        stats = FeatureStats.of(Moments.of(x), device=device, digest="0" * 64, at=1.0)
        intake.handle_stats(TOPICS.stats(device), stats.encode())
        if device == "a":
            first = intake.snapshot(publish=True)
    assert intake.strategy.version == first.version + 1  # b's statistics re-parameterized
    raw = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in first.weights.items()}
    delta, _ = _clip_and_noise(raw, Hyper(dp_clip=1.0, dp_noise=1.0), rng)
    sent = Contribution(delta, first.version, 5, device="a")
    mapped = intake.std.contribution(sent)
    limit = DpBound(1.0, 1.0).bound(sum(v.size for v in delta.values()))
    assert global_norm(delta) <= limit < global_norm(mapped.delta)
    assert mapped.sent_norm == pytest.approx(global_norm(delta))
    payload = Update.from_delta(
        delta, encoding="f32", device="a", seq=0, base_version=first.version, num_samples=5,
        steps=1, loss=0.1,
    ).encode()  # fmt: skip
    assert intake.handle(TOPICS.update("a"), payload).applied
    # An oversized one is still refused, by its sent norm.
    big = Update.from_delta(
        {k: 10 * v for k, v in delta.items()}, encoding="f32", device="a", seq=1,
        base_version=first.version, num_samples=5, steps=1, loss=0.1,
    ).encode()  # fmt: skip
    assert intake.handle(TOPICS.update("a"), big).reason == "norm_bound"
