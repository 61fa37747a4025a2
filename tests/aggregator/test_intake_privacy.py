"""The intake's DP accounting: ε per device and for the fleet, monotone, exact, persisted."""

from __future__ import annotations

from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

from aggregator import privacy
from aggregator.intake import Intake
from aggregator.ledger import Ledger
from aggregator.strategies import make_strategy
from fedmq.model import Arch, init_weights
from fedmq.topics import Topics
from fedmq.wire import AggregatorStatus, DeviceLedger, Update

ARCH = Arch("mlp", (4, 8, 3))
TOPICS = Topics("f")


def _intake(ledger: Ledger | None = None, noise: float = 1.0, delta: float = 1e-5) -> Intake:
    strategy = make_strategy("fedbuff", init_weights(ARCH, 0), 0, k=2)
    return Intake(TOPICS, ARCH, strategy, ledger=ledger, noise=noise, dp_delta=delta)


def _send(intake: Intake, device: str, seq: int) -> None:
    delta = {k: np.full_like(v, 0.01) for k, v in init_weights(ARCH, 0).items()}
    payload = Update.from_delta(
        delta, encoding="f32", device=device, seq=seq, base_version=intake.strategy.version,
        num_samples=5, steps=1, loss=0.1,
    ).encode()  # fmt: skip
    assert intake.handle(TOPICS.update(device), payload).applied


def _reference(z: float, n: int, delta: float) -> float:
    acc = RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(z), n)
    return acc.get_epsilon(delta)


def test_epsilon_grows_with_each_accepted_update_and_matches_dp_accounting() -> None:
    intake = _intake(noise=1.0, delta=1e-5)
    seen = []
    for seq in range(6):
        _send(intake, "a", seq)
        seen.append(intake.snapshot().epsilon)
    assert seen == sorted(set(seen))  # strictly increasing
    assert seen[-1] == pytest.approx(_reference(1.0, 6, 1e-5))


def test_the_fleet_is_its_worst_off_device_and_each_ledger_carries_its_own() -> None:
    intake = _intake(noise=2.0)
    for seq in range(4):
        _send(intake, "a", seq)
    _send(intake, "b", 0)
    snap = intake.snapshot(ledgers=True)
    by_device = {ledger.device: ledger.epsilon for ledger in snap.ledgers}
    assert by_device["a"] == pytest.approx(_reference(2.0, 4, 1e-5))
    assert by_device["b"] == pytest.approx(_reference(2.0, 1, 1e-5))
    assert snap.epsilon == by_device["a"]
    # On the wire, exactly `epsilon`, and it round-trips.
    ledger = DeviceLedger.decode(snap.ledgers[0].encode())
    assert ledger.epsilon == by_device["a"]


def test_without_noise_there_is_no_epsilon_on_the_wire() -> None:
    intake = _intake(noise=0.0)
    _send(intake, "a", 0)
    snap = intake.snapshot(ledgers=True)
    assert snap.epsilon is None and snap.ledgers[0].epsilon is None
    assert b"epsilon" not in snap.ledgers[0].encode()
    status = AggregatorStatus("serving", "fedbuff", {}, 0, 1, {}, None, None, 0.0, 0.0)
    assert b"epsilon" not in status.encode()


def test_the_spend_survives_a_restart_even_past_folded_events(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    first = _intake(Ledger(path, checkpoint_every=2, keep_events=1))
    for seq in range(5):
        _send(first, "a", seq)
    _send(first, "b", 0)
    before = first.snapshot().epsilon
    first.close()
    again = _intake(Ledger(path, checkpoint_every=2, keep_events=1))
    assert again.snapshot().epsilon == before
    assert again.privacy is not None and again.privacy.epsilon("b") is not None
    _send(again, "a", 5)
    assert again.snapshot().epsilon == pytest.approx(_reference(1.0, 6, 1e-5))
    again.close()


def test_accounting_is_cached_by_count() -> None:
    """Every mechanism is identical, so ε depends only on a device's count: a second
    device at the same count costs no accountant run (the event loop is never held up)."""
    privacy.epsilon.cache_clear()
    intake = _intake(noise=0.7)
    for device in ("a", "b", "c"):
        _send(intake, device, 0)
        intake.snapshot()
    info = privacy.epsilon.cache_info()
    assert info.misses == 1 and info.hits >= 2
