"""FeatureStats on the wire, and the prep field of GlobalModel."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmq.errors import DataError, WireError
from fedmq.featurestats import MAX_FEATURES, FeatureStats
from fedmq.model import Arch, init_weights
from fedmq.preprocess import Moments, Standardizer, pool
from fedmq.training import Hyper
from fedmq.wire import GlobalModel, decode_any

DIGEST = "ab" * 32
RUN = "0123456789abcdef"


@st.composite
def raw_tables(draw: st.DrawFn) -> np.ndarray:
    rows = draw(st.integers(1, 12))
    cols = draw(st.integers(1, 6))
    values = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
    return np.array(draw(st.lists(values, min_size=rows * cols, max_size=rows * cols))).reshape(
        rows, cols
    )


def _stats(x: np.ndarray, device: str = "d1", names: list[str] | None = None) -> FeatureStats:
    return FeatureStats.of(Moments.of(x), device=device, digest=DIGEST, at=1.0, features=names)


def _names(width: int) -> list[str]:
    return [f"f{i}" for i in range(width)]


def _body(msg: FeatureStats) -> dict:
    return msgpack.unpackb(msg.encode())


@given(raw_tables(), st.booleans())
def test_roundtrip_is_exact_in_float64(x: np.ndarray, named: bool) -> None:
    stats = _stats(x, names=_names(x.shape[1]) if named else None)
    back = FeatureStats.decode(stats.encode())
    assert back == stats
    assert ("features" in _body(stats)) is named  # unnamed: the bytes an older fedmq wrote
    assert isinstance(decode_any(stats.encode()), FeatureStats)
    m = back.moments()
    assert np.array_equal(m.sum, x.sum(0)) and np.array_equal(m.sumsq, np.square(x).sum(0))


@given(st.lists(raw_tables(), min_size=1, max_size=4), st.integers(1, 6))
def test_decoded_parts_pool_to_the_moments_of_the_union(parts: list, width: int) -> None:
    parts = [p[:, :1].repeat(width, 1) for p in parts]
    merged = pool(FeatureStats.decode(_stats(p).encode()).moments() for p in parts)
    union = np.concatenate(parts)
    assert merged.count == len(union)
    np.testing.assert_allclose(merged.mean, union.mean(0), rtol=1e-9, atol=1e-6)
    assert np.array_equal(merged.min, union.min(0)) and np.array_equal(merged.max, union.max(0))


BAD = [
    ("count", 0, "bad_value"),
    ("count", 1.0, "bad_type"),
    ("count", 2**53 + 1, "bad_value"),
    ("sum", [], "bad_value"),
    ("sum", [1], "bad_type"),
    ("sum", [float("nan")], "non_finite"),
    ("max", [float("inf")], "non_finite"),
    ("sumsq", [-1.0], "bad_value"),
    ("min", [5.0], "bad_value"),  # above max
    ("sum", [1.0, 2.0], "bad_shape"),
    ("sum", "1.0", "bad_type"),
    ("digest", "xyz", "bad_value"),
    ("device", "a/b", "bad_device_id"),
    ("at", -1.0, "bad_value"),
    ("extra", 1, "unknown_field"),
    ("features", "f0", "bad_type"),
    ("features", [], "bad_type"),
    ("features", [1], "bad_type"),
    ("features", [""], "bad_value"),
    ("features", ["a\nb"], "bad_value"),
    ("features", ["x" * 129], "bad_value"),
    ("features", ["a", "b"], "bad_shape"),  # two names, one feature
]


@pytest.mark.parametrize(("key", "value", "reason"), BAD)
def test_each_defect_has_its_reason(key: str, value: object, reason: str) -> None:
    body = _body(_stats(np.array([[1.0], [3.0]])))
    body[key] = value
    with pytest.raises(WireError) as err:
        FeatureStats.decode(msgpack.packb(body))
    assert err.value.reason == reason


def test_duplicate_feature_names_are_refused() -> None:
    body = _body(_stats(np.ones((2, 2)), names=["a", "b"]))
    body["features"] = ["a", "a"]
    with pytest.raises(WireError) as err:
        FeatureStats.decode(msgpack.packb(body))
    assert err.value.reason == "bad_value"


@given(raw_tables(), st.randoms(use_true_random=False))
def test_in_order_permutes_every_array_by_name(x: np.ndarray, rnd) -> None:
    names = _names(x.shape[1])
    order = names[:]
    rnd.shuffle(order)
    # The device's file has its columns in ``order``; the schema lists them as ``names``.
    device = _stats(x[:, [names.index(n) for n in order]], names=order)
    back = device.in_order(names)
    assert back.features == names and back.count == device.count
    for key in ("sum", "sumsq", "min", "max"):
        assert getattr(back, key) == [getattr(device, key)[order.index(n)] for n in names]
    np.testing.assert_allclose(back.moments().mean, x.mean(0), rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize(
    ("held", "reason"), [(["f0", "zz"], "missing_feature"), (["f0"], "extra_feature")]
)
def test_in_order_refuses_names_that_are_not_the_schemas(held: list[str], reason: str) -> None:
    stats = _stats(np.ones((2, 2)), names=["f0", "f1"])
    with pytest.raises(DataError) as err:
        stats.in_order(held)
    assert err.value.reason == reason
    assert _stats(np.ones((2, 2))).in_order(["a", "b"]) == _stats(np.ones((2, 2)))  # unnamed


def test_more_features_than_the_wire_allows_are_refused() -> None:
    body = _body(_stats(np.ones((2, 1))))
    for key in ("sum", "sumsq", "min", "max"):
        body[key] = [1.0] * (MAX_FEATURES + 1)
    with pytest.raises(WireError) as err:
        FeatureStats.decode(msgpack.packb(body))
    assert err.value.reason in ("malformed", "bad_value")


@settings(max_examples=300)
@given(raw_tables(), st.data())
def test_fuzz_mutated_payloads_decode_or_raise_wire_error(x: np.ndarray, data) -> None:
    named = data.draw(st.booleans())
    payload = bytearray(_stats(x, names=_names(x.shape[1]) if named else None).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))
    for candidate in (bytes(payload), bytes(payload[:cut])):
        try:
            back = FeatureStats.decode(candidate)
        except WireError:
            continue
        m = back.moments()  # whatever decodes is usable as moments
        assert m.count >= 1 and np.isfinite(m.sum).all()


@given(st.binary(max_size=200))
def test_fuzz_random_bytes_never_raise_anything_else(data: bytes) -> None:
    with pytest.raises(WireError):
        FeatureStats.decode(data)


# -- GlobalModel.prep -----------------------------------------------------------------


def _model(prep: Standardizer | None) -> GlobalModel:
    arch = Arch("mlp", (3, 4, 2))
    return GlobalModel.build(1, arch, init_weights(arch), Hyper(), run=RUN, prep=prep)


def test_prep_roundtrips_and_is_covered_by_the_digest() -> None:
    prep = Standardizer(np.array([1.0, 2.0, 3.0]), np.array([0.5, 2.0, 1e4]))
    plain, with_prep = _model(None), _model(prep)
    back = GlobalModel.decode(with_prep.encode())
    assert back.prep is not None and back.prep.same_as(prep)
    assert GlobalModel.decode(plain.encode()).prep is None
    assert "prep" not in msgpack.unpackb(plain.encode())  # v1 bytes stay as they were
    assert plain.digest != with_prep.digest
    body = msgpack.unpackb(with_prep.encode())
    del body["prep"]
    with pytest.raises(WireError) as err:
        GlobalModel.decode(msgpack.packb(body))
    assert err.value.reason == "bad_digest"


@pytest.mark.parametrize(
    ("prep", "reason"),
    [
        ({"mean": 1}, "bad_value"),
        ({"mean": np.zeros(3, np.float32), "scale": np.zeros(3, np.float32)}, "bad_value"),
        ({"mean": np.zeros(3, np.int32), "scale": np.ones(3, np.float32)}, "bad_dtype"),
        ({"mean": np.zeros(2, np.float32), "scale": np.ones(2, np.float32)}, "bad_shape"),
    ],
)
def test_bad_prep_is_refused(prep: dict, reason: str) -> None:
    from fedmq.envelope import _default

    body = msgpack.unpackb(_model(Standardizer.identity(3)).encode(), ext_hook=msgpack.ExtType)
    body["prep"] = prep
    with pytest.raises(WireError) as err:
        GlobalModel.decode(msgpack.packb(body, default=_default))
    assert err.value.reason == reason
