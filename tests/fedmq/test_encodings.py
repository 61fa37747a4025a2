"""fedmq.encodings: parsing the setting, the topk round trip, error feedback, a fuzzed decoder."""

from __future__ import annotations

import itertools
import math

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmq.encodings import (
    Encoding,
    index_dtype,
    parse_encoding,
    select_topk,
    topk_count,
)
from fedmq.errors import ConfigError, WireError
from fedmq.feedback import ErrorFeedback
from fedmq.model import Arch
from fedmq.tensors import DTYPES
from fedmq.wire import Update
from tests.fedmq.wire_payloads import SHAPES, pack, tensor_ext

FIELDS = {"device": "d1", "seq": 1, "base_version": 0, "num_samples": 4, "steps": 1, "loss": None}
finite32 = st.floats(-6e4, 6e4, allow_nan=False, width=32)  # float16 holds the top values
fractions = st.floats(1e-3, 1.0, exclude_min=False).filter(lambda f: 0 < f <= 1)


@st.composite
def arch_and_delta(draw: st.DrawFn) -> tuple[Arch, dict[str, np.ndarray]]:
    widths = draw(st.lists(st.integers(1, 9), min_size=2, max_size=3))
    arch = Arch("mlp", (*widths, draw(st.integers(2, 4))))
    delta = {
        name: np.asarray(
            draw(st.lists(finite32, min_size=math.prod(s), max_size=math.prod(s))), np.float32
        ).reshape(s)
        for name, s in arch.param_shapes().items()
    }
    return arch, delta


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("f32", Encoding("f32")),
        ("q8", Encoding("q8")),
        ("topk:0.1", Encoding("topk", 0.1)),
        ("topk:1", Encoding("topk", 1.0)),
        ("topk:1e-3", Encoding("topk", 0.001)),
    ],
)
def test_valid_encodings_parse(text, want):
    assert parse_encoding(text) == want
    assert parse_encoding(str(want)) == want  # str() is a setting that parses back


@pytest.mark.parametrize(
    "text",
    ["topk:0", "topk:2", "topk:x", "topk:-0.1", "topk:nan", "topk:inf", "topk", "f8", "q8:1"],
)
def test_a_bad_encoding_is_one_config_error_line(text):
    with pytest.raises(ConfigError) as err:
        parse_encoding(text, "--encoding")
    assert err.value.reason == "bad_encoding"
    assert str(err.value).startswith("--encoding") and "\n" not in str(err.value)
    assert repr(text) in str(err.value)


def test_from_delta_refuses_a_bad_encoding_as_a_wire_error():
    with pytest.raises(WireError, match="topk:F"):
        Update.from_delta({"w": np.zeros(3, np.float32)}, encoding="topk:0", **FIELDS)


@pytest.mark.parametrize(("fraction", "n", "k"), [(0.1, 320, 32), (0.1, 2048, 205), (0.1, 5, 1)])
def test_topk_keeps_the_ceiling_of_f_n_and_at_least_one(fraction, n, k):
    assert topk_count(fraction, n) == k
    assert topk_count(1.0, n) == n


def test_index_dtype_follows_the_parameter_size():
    assert index_dtype(2**16) == np.dtype("<u2") and index_dtype(2**16 + 1) == np.dtype("<u4")
    big = np.zeros(2**16 + 5, np.float32)
    big[-1] = 1.0  # the index 65540 needs 32 bits
    idx, values = select_topk(big, 1e-5)
    assert idx.dtype == np.dtype("<u4") and idx[-1] == 2**16 + 4 and values[-1] == 1.0


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(arch_and_delta(), fractions)
def test_topk_round_trips_through_the_bytes(case, fraction):
    arch, delta = case
    shapes = arch.param_shapes()
    update = Update.from_delta(delta, encoding=f"topk:{fraction!r}", **FIELDS)
    back = Update.decode(update.encode(), shapes=shapes)
    assert back.encoding == "topk" and back.encode() == update.encode()
    dense = back.dense_delta()
    for name, arr in delta.items():
        flat, got = arr.reshape(-1), dense[name].reshape(-1)
        idx = back.indices[name].astype(np.int64)
        assert dense[name].shape == arr.shape and dense[name].dtype == np.float32
        assert len(idx) == topk_count(fraction, flat.size)
        assert back.indices[name].dtype == index_dtype(flat.size)
        np.testing.assert_array_equal(got[idx], flat[idx].astype(np.float16).astype(np.float32))
        dropped = np.setdiff1d(np.arange(flat.size), idx)
        assert not got[dropped].any()
        if dropped.size:  # what is sent is at least as large as anything dropped
            assert np.abs(flat[idx]).min() >= np.abs(flat[dropped]).max()


@settings(deadline=None, max_examples=60)
@given(arch_and_delta(), fractions, st.floats(-1, 1, width=32))
def test_topk_feedback_keeps_meant_equal_to_sent_plus_residual(case, fraction, carried):
    _, delta = case
    ef = ErrorFeedback()
    ef.residual = {k: np.full_like(v, carried) for k, v in delta.items()}
    sent = ef.encode(delta, encoding=f"topk:{fraction!r}", **FIELDS).dense_delta()
    for name, arr in delta.items():
        meant = arr + np.float32(carried)
        np.testing.assert_allclose(sent[name] + ef.residual[name], meant, rtol=1e-6, atol=1e-6)


def test_with_feedback_topk_sends_every_coordinate_eventually():
    # Without feedback the small coordinates of a steady delta are never sent; with it,
    # their residual grows until it is among the largest, so the totals agree.
    rng = np.random.default_rng(0)
    steady = (rng.standard_normal(500) * np.logspace(-3, 0, 500)).astype(np.float32)
    rounds = 300
    totals = {}
    for ef in (True, False):
        feedback = ErrorFeedback(ef)
        sent = np.zeros_like(steady)
        for _ in range(rounds):
            sent += feedback.encode({"w": steady}, encoding="topk:0.1", **FIELDS).dense_delta()["w"]
        totals[ef] = np.abs(sent - rounds * steady).max() / (rounds * np.abs(steady).max())
    assert totals[True] < 0.01 and totals[False] > 0.1, totals


def test_topk_is_at_most_a_fifth_of_f32_for_a_real_sized_model():
    arch = Arch("mlp", (64, 32, 10))
    w = {k: np.ones(s, np.float32) for k, s in arch.param_shapes().items()}
    f32 = len(Update.from_delta(w, encoding="f32", **FIELDS).encode())
    topk = len(Update.from_delta(w, encoding="topk:0.1", **FIELDS).encode())
    assert topk < f32 / 5  # 4 bytes a kept coordinate, 1 in 10 kept


# -- decoding hostile topk payloads -------------------------------------------------


def _topk_body() -> dict:
    w = {k: np.arange(math.prod(s), dtype=np.float32).reshape(s) for k, s in SHAPES.items()}
    u = Update.from_delta(w, encoding="topk:0.5", **FIELDS)
    return {"v": 1, "kind": "update", **u.to_map()}


def _decode_or_reject(data: bytes) -> Update | None:
    """Decode against ARCH; a WireError is the only failure allowed, never another one."""
    try:
        update = Update.decode(data, shapes=SHAPES)
    except WireError:
        return None
    dense = update.dense_delta()  # what the aggregator does next must work too
    assert {k: v.shape for k, v in dense.items()} == dict(SHAPES)
    assert all(np.isfinite(v).all() for v in dense.values())
    return update


def _cast(dtype: str, values: list[int]) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # 70000 as float16 is inf: wanted
        return np.asarray(values, np.int64).astype(dtype)


tensors = st.builds(
    lambda code, n, data: tensor_ext(code, (n,), data),
    st.sampled_from([*sorted(DTYPES), 0, 9]),
    st.integers(0, 40),
    st.binary(max_size=120),
) | st.builds(
    _cast,
    st.sampled_from(["<u2", "<u4", "<f2", "<f4", "<i4", "u1", "i1"]),
    st.lists(st.integers(-3, 70_000), max_size=30),
)


@settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["delta", "indices"]),
    st.sampled_from(list(SHAPES)),
    tensors,
)
def test_any_tensor_in_a_topk_update_is_a_wire_error_or_valid(where, name, tensor):
    body = _topk_body()
    body[where] = {**body[where], name: tensor}
    _decode_or_reject(pack(body))


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_topk_payloads_are_a_wire_error_or_valid(data: st.DataObject):
    raw = bytearray(pack(_topk_body()))
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    _decode_or_reject(bytes(raw[:cut]))


@settings(deadline=None, max_examples=200)
@given(st.lists(st.integers(0, 11), min_size=1, max_size=12))
def test_only_strictly_increasing_indices_in_range_are_accepted(positions):
    body = _topk_body()
    body["delta"]["w0"] = np.ones(len(positions), np.float16)
    body["indices"]["w0"] = np.asarray(positions, np.uint16)
    got = _decode_or_reject(pack(body))
    assert (got is not None) == all(a < b for a, b in itertools.pairwise(positions))


def test_a_topk_update_decoded_without_the_model_cannot_be_made_dense():
    update = Update.decode(pack(_topk_body()))  # what `decode_any` tools see
    with pytest.raises(WireError, match="model's shapes"):
        update.dense_delta()


def test_topk_bytes_claiming_more_than_the_payload_are_refused_before_allocation():
    body = _topk_body()
    body["indices"]["w0"] = msgpack.ExtType(1, bytes([6, 1]) + (2**31).to_bytes(4, "little"))
    assert _decode_or_reject(pack(body)) is None
