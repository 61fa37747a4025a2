"""edge_agent.checks: which model an agent follows, and what it refuses to train on."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.checks import (
    Limits,
    check_hyper,
    check_result,
    follows,
    one_line,
    read_ledger,
    read_model,
)
from fedmq.errors import FedmqError
from fedmq.model import Arch, init_weights
from fedmq.training import Hyper, TrainStats, train_local
from fedmq.wire import DeviceLedger, DeviceStatus, GlobalModel, weights_digest

ARCH = Arch("mlp", (4, 8, 3))
LIMITS = Limits(max_epochs=50, max_batch=1024)


RUN = "0123456789abcdef"


def _model(version: int = 1, created_at: float = 1.0, weights=None, hyper=None) -> GlobalModel:
    weights = init_weights(ARCH, 0) if weights is None else weights
    return GlobalModel.build(
        version, ARCH, weights, hyper or Hyper(), run=RUN, created_at=created_at
    )


def _stats(loss: float = 0.5) -> TrainStats:
    return TrainStats(loss=loss, samples=10, steps=1, seconds=0.0, clipped=False)


# -- the version-acceptance rule ----------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "offered", "expected"),
    [
        (None, (0, 1.0), True),
        ((3, 1.0), (4, 0.5), True),  # a later version, whatever its time
        ((3, 1.0), (3, 2.0), True),  # the same version republished by a restarted aggregator
        ((3, 1.0), (3, 1.0), False),  # a redelivery of the model already held
        ((3, 1.0), (2, 9.0), False),  # a lower version is ignored
    ],
)
def test_follows_a_later_stamp_only(held, offered, expected):
    held_model = None if held is None else _model(*held)
    assert follows(held_model, _model(*offered)) is expected


# -- local limits -------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(epochs=st.integers(1, 1000), batch=st.integers(1, 1_000_000))
def test_hyper_is_refused_exactly_beyond_the_limits(epochs, batch):
    hyper = Hyper(epochs=epochs, batch=batch)
    beyond = epochs > LIMITS.max_epochs or batch > LIMITS.max_batch
    if beyond:
        with pytest.raises(FedmqError) as info:
            check_hyper(hyper, LIMITS)
        assert info.value.reason == "hyper_limit"
    else:
        check_hyper(hyper, LIMITS)


def test_a_thousand_epochs_of_batch_one_is_refused_with_a_clear_message():
    payload = _model(hyper=Hyper(epochs=1000, batch=1)).encode()
    with pytest.raises(FedmqError) as info:
        read_model(payload, 4, LIMITS)
    assert info.value.reason == "hyper_limit"
    assert "epochs=1000" in info.value.message and "max_epochs=50" in info.value.message


# -- decoding what arrives ----------------------------------------------------------------


def _nan_model() -> bytes:
    # build() refuses non-finite weights; a hostile sender does not use build().
    weights = {k: v.copy() for k, v in init_weights(ARCH, 0).items()}
    weights["w0"][0, 0] = np.nan
    return GlobalModel(RUN, 1, ARCH, weights, weights_digest(ARCH, weights), Hyper(), 1.0).encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xc1\x00garbage", "malformed"),
        (b"", "malformed"),
        (DeviceStatus("d", "idle", "0", 1, 1, 1, None, None, None, 1.0).encode(), "bad_kind"),
        (_nan_model(), "non_finite"),
        (
            GlobalModel.build(
                1, Arch("mlp", (5, 3)), init_weights(Arch("mlp", (5, 3))), Hyper(), run=RUN
            ).encode(),
            "bad_shape",
        ),
    ],
)
def test_bad_models_are_refused_with_a_reason(payload, reason):
    with pytest.raises(FedmqError) as info:
        read_model(payload, 4, LIMITS)
    assert info.value.reason == reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_read_model_refuses_any_bytes_with_a_fedmq_error(payload):
    # Random bytes are never a valid model; the point is that nothing else escapes.
    with pytest.raises(FedmqError):
        read_model(payload, 4, LIMITS)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_read_model_survives_damage_to_a_real_payload(data):
    payload = bytearray(_model().encode())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    try:
        model = read_model(bytes(payload), 4, LIMITS)
    except FedmqError:
        return
    assert all(np.isfinite(w).all() for w in model.weights.values())


def test_read_ledger_checks_whose_ledger_it_is():
    ledger = DeviceLedger("pi-1", 3, {}, 7, 0, 30, 1.0, 2.0).encode()
    assert read_ledger(ledger, "pi-1").last_seq == 7
    with pytest.raises(FedmqError) as info:
        read_ledger(ledger, "pi-2")
    assert info.value.reason == "identity_mismatch"
    with pytest.raises(FedmqError):
        read_ledger(b"\x00", "pi-1")


# -- training results ---------------------------------------------------------------------


def test_huge_finite_weights_make_training_non_finite_and_that_is_refused():
    # The attack of issue 10: weights near 1e30 are finite, so they decode; training
    # on them overflows. The result must be refused, never encoded as an update.
    weights = {k: (v + 1.0) * np.float32(1e30) for k, v in init_weights(ARCH, 0).items()}
    model = read_model(_model(weights=weights).encode(), 4, LIMITS)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 4)).astype(np.float32)
    y = rng.integers(0, 3, 20)
    with np.errstate(all="ignore"):
        delta, stats = train_local(model.arch, model.weights, x, y, model.hyper, rng)
    with pytest.raises(FedmqError) as info:
        check_result(delta, stats)
    assert info.value.reason == "train_non_finite"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_result_refuses_a_non_finite_delta_or_loss(bad):
    good = {k: np.zeros_like(v) for k, v in init_weights(ARCH, 0).items()}
    check_result(good, _stats())
    broken = {**good, "b1": np.array([0.0, bad, 0.0], np.float32)}
    with pytest.raises(FedmqError, match="b1"):
        check_result(broken, _stats())
    with pytest.raises(FedmqError, match="loss"):
        check_result(good, _stats(loss=float(bad)))


@given(st.text(max_size=1000))
def test_one_line_is_one_short_line(text):
    line = one_line(text)
    assert "\n" not in line and "\r" not in line and len(line) <= 256
    assert bool(line) == bool(text.split())


# -- run identity: the agent follows the aggregator's run ----------------------------------

OTHER_RUN = "fedcba9876543210"
_BASE = _model()


def _ident(run: str, rollbacks: int, version: int, created_at: float) -> GlobalModel:
    return dataclasses.replace(
        _BASE, run=run, rollbacks=rollbacks, version=version, created_at=created_at
    )


_IDENTS = st.builds(
    _ident,
    st.sampled_from([RUN, OTHER_RUN]),
    st.integers(0, 3),
    st.integers(0, 5),
    st.sampled_from([1.0, 2.0]),
)


@settings(max_examples=300, deadline=None)
@given(held=_IDENTS, offered=_IDENTS)
def test_follows_another_run_always_and_a_newer_rollbacks_version_in_the_same_run(held, offered):
    got = follows(held, offered)
    if offered.run != held.run:
        assert got
    else:
        newer = (offered.rollbacks, offered.version, offered.created_at) > (
            held.rollbacks,
            held.version,
            held.created_at,
        )
        assert got is newer
        assert not (got and follows(offered, held))  # never both ways in one run
        if offered.rollbacks > held.rollbacks:
            assert got  # an announced rollback, whatever its version
        if offered.rollbacks == held.rollbacks and offered.version < held.version:
            assert not got  # a lower version of the same run is ignored


def test_a_rollback_from_v310_to_v145_is_followed_and_v144_after_it_is_not():
    held = _ident(RUN, 0, 310, 1.0)
    rolled = _ident(RUN, 1, 145, 2.0)
    assert follows(held, rolled)
    assert not follows(rolled, _ident(RUN, 0, 311, 3.0))  # the pre-rollback line is over
    assert follows(rolled, _ident(RUN, 1, 146, 3.0))
    assert follows(held, _ident(OTHER_RUN, 0, 0, 0.0))  # a new run, even at v0
