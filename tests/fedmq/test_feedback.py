"""Error feedback: the rounding error of f16/q8 is carried, not accumulated."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmq.feedback import ErrorFeedback
from fedmq.wire import Update

FIELDS = {"device": "d", "seq": 0, "base_version": 0, "num_samples": 1, "steps": 1, "loss": None}


def total_sent(feedback: ErrorFeedback, deltas: list[np.ndarray], encoding: str) -> np.ndarray:
    sent = np.zeros_like(deltas[0])
    for d in deltas:
        sent += feedback.encode({"w": d}, encoding=encoding, **FIELDS).dense_delta()["w"]
    return sent


@pytest.mark.parametrize("encoding", ["f16", "q8"])
def test_with_feedback_the_total_sent_stays_within_one_step_of_the_total_meant(encoding):
    rng = np.random.default_rng(0)
    deltas = [(rng.standard_normal(200) * 1e-3).astype(np.float32) for _ in range(200)]
    meant = np.sum(deltas, axis=0)
    with_ef = np.abs(total_sent(ErrorFeedback(True), deltas, encoding) - meant).max()
    without = np.abs(total_sent(ErrorFeedback(False), deltas, encoding) - meant).max()
    one_step = np.abs(deltas[-1]).max() / 127 if encoding == "q8" else 1e-6
    assert with_ef <= 2 * one_step
    assert with_ef < without / 4  # the residual is what makes the difference


@settings(deadline=None, max_examples=50)
@given(
    st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=1, max_size=20).map(
        lambda v: np.array(v, np.float32)
    ),
    st.sampled_from(["f16", "q8"]),
)
def test_meant_equals_sent_plus_residual(delta, encoding):
    ef = ErrorFeedback()
    ef.residual = {"w": np.full_like(delta, 0.01)}
    sent = ef.encode({"w": delta}, encoding=encoding, **FIELDS).dense_delta()["w"]
    np.testing.assert_allclose(sent + ef.residual["w"], delta + np.float32(0.01), atol=1e-6)


def test_f32_is_sent_exactly_and_keeps_no_residual():
    ef = ErrorFeedback()
    d = np.array([1e-7, 3.0], np.float32)
    got = ef.encode({"w": d}, encoding="f32", **FIELDS)
    assert isinstance(got, Update) and got.dense_delta()["w"].tobytes() == d.tobytes()
    assert ef.residual == {}
