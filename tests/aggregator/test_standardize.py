"""Federated standardization through the intake: exact merge, re-parameterization, restart."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest

from aggregator.intake import Intake
from aggregator.ledger import Ledger
from aggregator.strategies import make_strategy
from fedmq.featurestats import FeatureStats
from fedmq.model import Arch, forward, init_weights, loss
from fedmq.preprocess import Moments, Standardizer
from fedmq.schema import Schema
from fedmq.topics import Topics
from fedmq.training import Hyper, train_local
from fedmq.wire import Update

ARCH = Arch("mlp", (3, 8, 3))
TOPICS = Topics("f")
SCALES = np.array([1e-3, 1.0, 1e4])
OFFSETS = np.array([5e-3, -20.0, 3e4])


def _raw(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 3)) + shift
    y = (z[:, 0] > 0).astype(np.int64) + (z[:, 2] > 0.5)
    return (z * SCALES + OFFSETS).astype(np.float32), y


def _stats(device: str, x: np.ndarray, at: float = 1.0, names: list[str] | None = None) -> bytes:
    moments = Moments.of(x)
    return FeatureStats.of(moments, device=device, digest="0" * 64, at=at, features=names).encode()


def _intake(strategy: str = "fedbuff", ledger: Ledger | None = None, **params) -> Intake:
    return Intake(TOPICS, ARCH, make_strategy(strategy, init_weights(ARCH, 0), 0, **params),
                  ledger=ledger, standardize=True)  # fmt: skip


def _update(device: str, seq: int, base: int, x, y, prep: Standardizer, weights) -> bytes:
    delta, stats = train_local(
        ARCH, weights, x, y, Hyper(lr=0.1, epochs=2), np.random.default_rng(seq), prep=prep
    )
    return Update.from_delta(
        delta, device=device, seq=seq, base_version=base, num_samples=stats.samples,
        steps=stats.steps, loss=stats.loss,
    ).encode()  # fmt: skip


def test_merge_is_exact_each_device_once_latest_replacing_earlier() -> None:
    intake = _intake()
    (xa, _), (xb, _), (xb2, _) = _raw(50, 1), _raw(70, 2, 1.0), _raw(30, 3, -1.0)
    intake.handle_stats(TOPICS.stats("a"), _stats("a", xa))
    intake.handle_stats(TOPICS.stats("b"), _stats("b", xb, at=1.0))
    intake.handle_stats(TOPICS.stats("b"), _stats("b", xb2, at=2.0))  # replaces b's first
    stale = intake.handle_stats(TOPICS.stats("b"), _stats("b", xb, at=1.5))  # older: ignored
    assert stale.applied and not stale.new_version
    merged = intake.std.merged()
    union = np.concatenate([xa, xb2]).astype(np.float64)
    assert merged.count == 80
    np.testing.assert_allclose(merged.mean, union.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.var, union.var(0), rtol=1e-9)
    # The model goes out with the merged standardization.
    prep = intake.snapshot(publish=True).prep
    np.testing.assert_allclose(prep.mean, union.mean(0), rtol=1e-6)
    np.testing.assert_allclose(prep.scale, union.std(0), rtol=1e-5)


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (TOPICS.stats("b"), _stats("a", np.ones((2, 3))), "bad_device_id"),
        (TOPICS.stats("a"), _stats("a", np.ones((2, 4))), "bad_shape"),
        (TOPICS.stats("a"), b"\x93junk", "malformed"),
        (Topics("other").stats("a"), _stats("a", np.ones((2, 3))), "bad_topic"),
    ],
)
def test_bad_statistics_are_refused_and_change_nothing(topic, payload, reason) -> None:
    intake = _intake()
    out = intake.handle_stats(topic, payload)
    assert out.reason == reason and not out.applied
    assert intake.std.devices == 0


@pytest.mark.parametrize("strategy", ["fedbuff", "fedasync"])
def test_a_new_device_re_parameterizes_without_changing_the_function(strategy: str) -> None:
    params = {"k": 3} if strategy == "fedbuff" else {}
    intake = _intake(strategy, **params)
    xa, ya = _raw(200, 1)
    xb, yb = _raw(200, 2, shift=1.5)  # another site: another mean and spread
    intake.handle_stats(TOPICS.stats("a"), _stats("a", xa))
    snap = intake.snapshot(publish=True)
    old_prep, weights = snap.prep, snap.weights
    # Training goes on: one update applied, one buffered (FedBuff) ...
    intake.handle(TOPICS.update("a"), _update("a", 0, 0, xa, ya, old_prep, weights))
    stale = _update("a", 1, intake.strategy.version, xa, ya, old_prep, intake.strategy.weights)
    before = intake.snapshot()
    probe = np.concatenate([xa, xb])
    f_before = forward(ARCH, before.weights, before.prep.apply(probe))
    # ... then b joins, and the model is re-parameterized as a new version.
    out = intake.handle_stats(TOPICS.stats("b"), _stats("b", xb))
    assert out.new_version and out.version == before.version + 1
    after = intake.snapshot(publish=True)
    assert not after.prep.same_as(before.prep)
    f_after = forward(ARCH, after.weights, after.prep.apply(probe))
    np.testing.assert_allclose(f_after, f_before, rtol=1e-4, atol=1e-4)
    # No jump: the loss on raw rows is the same, and a stale update trained under the old
    # standardization is mapped, not refused, and still lowers it.
    raw_loss = loss(ARCH, after.weights, after.prep.apply(probe), np.concatenate([ya, yb]))
    assert raw_loss == pytest.approx(
        loss(ARCH, before.weights, before.prep.apply(probe), np.concatenate([ya, yb])), rel=1e-4
    )
    assert intake.handle(TOPICS.update("a"), stale).applied
    for seq in range(2, 8):
        w, p, v = intake.strategy.weights, intake.std.current, intake.strategy.version
        for dev, x, y in (("a", xa, ya), ("b", xb, yb)):
            intake.handle(TOPICS.update(dev), _update(dev, seq, v, x, y, p, w))
    final = intake.snapshot()
    end = loss(ARCH, final.weights, final.prep.apply(probe), np.concatenate([ya, yb]))
    assert end < raw_loss


def test_statistics_and_preps_survive_a_restart(tmp_path) -> None:
    path = tmp_path / "ledger.sqlite"
    xa, ya = _raw(100, 1)
    xb, _ = _raw(60, 2, shift=2.0)
    intake = _intake(ledger=Ledger(path), k=2)
    intake.handle_stats(TOPICS.stats("a"), _stats("a", xa))
    first = intake.snapshot(publish=True)
    intake.handle(TOPICS.update("a"), _update("a", 0, 0, xa, ya, first.prep, first.weights))
    intake.handle_stats(TOPICS.stats("b"), _stats("b", xb))
    # An update trained on the old prep, after the change, then a crash.
    late = _update("a", 1, 0, xa, ya, first.prep, first.weights)
    intake.handle(TOPICS.update("a"), late)
    live = intake.snapshot()
    intake.close()
    again = _intake(ledger=Ledger(path), k=2)
    back = again.snapshot(publish=True)
    assert again.std.devices == 2 and again.std.published
    assert back.version == live.version and back.prep.same_as(live.prep)
    for name in live.weights:
        np.testing.assert_array_equal(back.weights[name], live.weights[name])
    assert again.std.at(0).same_as(first.prep)
    again.close()


async def test_the_first_model_waits_for_the_stats_quorum_then_no_longer() -> None:
    intake = _intake()
    heard, stop = asyncio.Event(), asyncio.Event()
    waiting = asyncio.create_task(intake.std.quorum(heard, stop, 2, 600.0))
    for _ in range(3):
        await asyncio.sleep(0)  # let it wait on ``heard``
    intake.handle_stats(TOPICS.stats("a"), _stats("a", _raw(20, 0)[0]))
    heard.set()
    intake.handle_stats(TOPICS.stats("a"), _stats("a", _raw(30, 1)[0], at=2.0))  # "a" again
    heard.set()
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiting.done()  # one device, counted once: the quorum is two
    intake.handle_stats(TOPICS.stats("b"), _stats("b", _raw(20, 2)[0]))
    heard.set()
    await asyncio.wait_for(waiting, 5)  # two devices: on at once, long before 600 s


async def test_without_the_quorum_the_first_model_goes_out_after_stats_wait() -> None:
    intake = _intake()
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("fedmq.aggregator")  # its own handler: whatever root holds
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.WARNING)  # whatever an earlier test configured
    try:
        started = time.monotonic()
        await intake.std.quorum(asyncio.Event(), asyncio.Event(), 3, 0.2)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert time.monotonic() - started >= 0.2
    assert "feature statistics from 0 of 3 devices after 0s; publishing anyway" in seen


def test_named_statistics_are_merged_by_name_whatever_the_devices_column_order() -> None:
    schema = Schema(("a", "b", "c"), "kind", "classification", ("x", "y", "z"))
    arch = Arch("mlp", (3, 8, 3), schema=schema)
    named = Intake(TOPICS, arch, make_strategy("fedbuff", init_weights(arch, 0), 0),
                   standardize=True)  # fmt: skip
    plain = _intake()
    xa, xb = _raw(50, 1), _raw(70, 2, shift=1.0)
    order = [2, 0, 1]  # device b's file holds c, a, b
    named.handle_stats(TOPICS.stats("a"), _stats("a", xa[0], names=["a", "b", "c"]))
    named.handle_stats(TOPICS.stats("b"), _stats("b", xb[0][:, order], names=["c", "a", "b"]))
    plain.handle_stats(TOPICS.stats("a"), _stats("a", xa[0]))
    plain.handle_stats(TOPICS.stats("b"), _stats("b", xb[0]))
    assert named.std.devices == 2 and named.std.target().same_as(plain.std.target())
    # Names that are not the schema's features change nothing.
    before = named.std.target()
    out = named.handle_stats(TOPICS.stats("c"), _stats("c", xb[0], names=["a", "b", "lux"]))
    assert not out.applied and out.reason == "missing_feature"
    assert named.std.devices == 2 and named.std.target().same_as(before)


def test_the_first_statistics_set_an_untrained_models_standardization(tmp_path) -> None:
    """The first model went out before any device sent statistics (stats_wait ran out)."""
    path = tmp_path / "ledger.sqlite"
    intake = _intake("fedasync", ledger=Ledger(path))
    first = intake.snapshot(publish=True)
    assert first.prep.same_as(Standardizer.identity(3))
    xa, ya = _raw(200, 1)
    raw_update = _update("a", 0, first.version, xa, ya, first.prep, first.weights)
    out = intake.handle_stats(TOPICS.stats("a"), _stats("a", xa))
    assert out.new_version and out.version == first.version + 1
    second = intake.snapshot(publish=True)
    # The same untrained weights, now with the standardization: not re-expressed for raw
    # inputs, which would have scaled the 1e4 feature's weights by ~1e4.
    for name in first.weights:
        np.testing.assert_array_equal(second.weights[name], first.weights[name])
    assert second.prep.same_as(Standardizer.from_moments(Moments.of(xa)))
    # An update trained on raw inputs before that is refused, not mapped.
    refused = intake.handle(TOPICS.update("a"), raw_update)
    assert not refused.applied and refused.reason == "too_stale"
    trained = _update("a", 1, second.version, xa, ya, second.prep, second.weights)
    assert intake.handle(TOPICS.update("a"), trained).applied
    live = intake.snapshot()
    intake.close()
    # A restart holds the one standardization from the version it was set at.
    again = _intake("fedasync", ledger=Ledger(path))
    assert [v for v, _ in again.std.history] == [second.version]
    assert again.snapshot().version == live.version and again.std.current.same_as(second.prep)
    again.close()


def test_once_trained_a_first_standardization_re_parameterizes_instead() -> None:
    intake = _intake("fedasync")
    first = intake.snapshot(publish=True)
    xa, ya = _raw(200, 1)
    xa_scaled = xa / np.abs(xa).max(0)  # trainable on raw inputs without blowing up
    update = _update("a", 0, first.version, xa_scaled, ya, first.prep, first.weights)
    assert intake.handle(TOPICS.update("a"), update).applied
    trained = intake.snapshot()
    out = intake.handle_stats(TOPICS.stats("a"), _stats("a", xa_scaled))
    assert out.new_version
    after = intake.snapshot(publish=True)
    assert not after.prep.same_as(first.prep)
    f_before = forward(ARCH, trained.weights, xa_scaled)
    f_after = forward(ARCH, after.weights, after.prep.apply(xa_scaled))
    np.testing.assert_allclose(f_after, f_before, rtol=1e-4, atol=1e-4)
    # And an update trained before the change is still mapped, not refused.
    late = _update("a", 1, first.version + 1, xa_scaled, ya, first.prep, trained.weights)
    assert intake.handle(TOPICS.update("a"), late).applied
