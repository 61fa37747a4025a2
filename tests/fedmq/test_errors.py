"""fedmq's errors cross process boundaries (a benchmark's worker pool) intact."""

from __future__ import annotations

import pickle

import pytest

from fedmq import errors


@pytest.mark.parametrize(
    "exc",
    [
        errors.WireError("bad_shape", "delta w0 is 3x2, the model's is 2x3"),
        errors.ConfigError("bad_param", "k must be >= 1", field="k"),
        errors.UpdateRejected("too_stale", "70 versions old", device="d1", staleness=70),
        errors.BrokerError("unreachable", "no broker at mqtt://127.0.0.1:1"),
    ],
)
def test_an_error_pickles_with_its_reason_message_and_fields(exc):
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert (back.reason, back.message, back.fields, str(back)) == (
        exc.reason, exc.message, exc.fields, str(exc),
    )  # fmt: skip
    if isinstance(exc, errors.UpdateRejected):
        assert (back.device, back.staleness) == ("d1", 70)
