"""Wire format v1: round trips, every rejection reason, and fuzzing of the decoders."""

from __future__ import annotations

import contextlib
import struct

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmq.errors import WireError
from fedmq.model import Arch, init_weights
from fedmq.training import Hyper
from fedmq.wire import (
    MESSAGES,
    AggregatorStatus,
    DeviceLedger,
    DeviceStatus,
    GlobalModel,
    Update,
    decode_any,
    decode_tensor,
    encode_tensor,
    weights_sha256,
)

ARCH = Arch("mlp", (4, 3, 2))
SHAPES = ARCH.param_shapes()

finite32 = st.floats(-1e6, 1e6, allow_nan=False, width=32)
times = st.floats(0, 4e9, allow_nan=False)
ids = st.text(
    st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="+#/$"),
    min_size=1,
    max_size=64,
)
small_int = st.integers(0, 2**40)
metric_maps = st.dictionaries(st.text(min_size=1, max_size=20), finite32, max_size=5)
reason_maps = st.dictionaries(st.text(min_size=1, max_size=20), small_int, max_size=5)


@st.composite
def deltas(draw: st.DrawFn, arch: Arch = ARCH) -> dict[str, np.ndarray]:
    return {
        name: np.asarray(
            draw(st.lists(finite32, min_size=int(np.prod(s)), max_size=int(np.prod(s)))),
            dtype=np.float32,
        ).reshape(s)
        for name, s in arch.param_shapes().items()
    }


@st.composite
def updates(draw: st.DrawFn) -> Update:
    encoding = draw(st.sampled_from(["f32", "f16", "q8"]))
    delta = draw(deltas())
    if encoding == "f16":
        delta = {k: np.clip(v, -6e4, 6e4) for k, v in delta.items()}
    return Update.from_delta(
        delta,
        encoding=encoding,
        device=draw(ids),
        seq=draw(small_int),
        base_version=draw(small_int),
        num_samples=draw(st.integers(1, 2**31 - 1)),
        steps=draw(st.integers(0, 2**31 - 1)),
        loss=draw(st.none() | finite32),
        metrics=draw(metric_maps),
        sent_at=draw(times),
    )


@st.composite
def archs(draw: st.DrawFn) -> Arch:
    if draw(st.booleans()):
        return Arch("linear", (draw(st.integers(1, 5)), draw(st.integers(1, 3))))
    widths = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    return Arch("mlp", (*widths, draw(st.integers(2, 5))), draw(st.sampled_from(["relu", "tanh"])))


@st.composite
def global_models(draw: st.DrawFn) -> GlobalModel:
    arch = draw(archs())
    hyper = Hyper(
        lr=draw(st.floats(1e-4, 1.0)),
        epochs=draw(st.integers(1, 20)),
        batch=draw(st.integers(1, 512)),
        mu=draw(st.floats(0, 1)),
        clip=draw(st.floats(0, 10)),
    )
    return GlobalModel.build(
        draw(small_int), arch, draw(deltas(arch)), hyper, created_at=draw(times)
    )


device_statuses = st.builds(
    DeviceStatus,
    device=ids,
    state=st.sampled_from(["online", "training", "idle", "offline"]),
    agent_version=st.text(max_size=20),
    model_version=st.integers(-1, 2**40),
    samples=small_int,
    last_seq=st.integers(-1, 2**40),
    last_loss=st.none() | finite32,
    cpu=st.none() | st.floats(0, 800),
    rss=st.none() | small_int,
    at=times,
)
aggregator_statuses = st.builds(
    AggregatorStatus,
    state=st.sampled_from(["starting", "serving", "stopping", "offline"]),
    strategy=st.sampled_from(["fedasync", "fedbuff", "fedavg"]),
    params=st.dictionaries(
        st.text(min_size=1, max_size=10),
        st.none() | st.booleans() | small_int | finite32 | st.text(max_size=10),
        max_size=5,
    ),
    version=small_int,
    accepted=small_int,
    rejected=reason_maps,
    last_accuracy=st.none() | st.floats(0, 1),
    last_loss=st.none() | finite32,
    started_at=times,
    at=times,
)
ledgers = st.builds(
    DeviceLedger,
    device=ids,
    accepted=small_int,
    rejected=reason_maps,
    last_seq=st.integers(-1, 2**40),
    last_staleness=st.none() | small_int,
    samples=small_int,
    first_seen=times,
    last_seen=times,
)
any_message = st.one_of(updates(), global_models(), device_statuses, aggregator_statuses, ledgers)


def assert_same(a: object, b: object) -> None:
    assert type(a) is type(b)
    for name in type(a).FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, dict) and x and isinstance(next(iter(x.values())), np.ndarray):
            assert list(x) == list(y)
            for k in x:
                assert x[k].dtype == y[k].dtype
                np.testing.assert_array_equal(x[k], y[k])
        else:
            assert x == y, name


# -- round trips ----------------------------------------------------------------------


@given(any_message)
def test_every_valid_message_round_trips(msg) -> None:
    data = msg.encode()
    back = type(msg).decode(data)
    assert_same(msg, back)
    assert back.encode() == data
    assert_same(decode_any(data), msg)


@given(updates())
def test_update_decodes_against_its_architecture(update: Update) -> None:
    back = Update.decode(update.encode(), shapes=SHAPES)
    for name, arr in back.dense_delta().items():
        assert arr.dtype == np.float32 and arr.shape == SHAPES[name]


@given(deltas())
def test_quantised_encodings_stay_close(delta: dict[str, np.ndarray]) -> None:
    fields = dict(device="d", seq=0, base_version=0, num_samples=1, steps=1, loss=None)
    for encoding, rel in (("f16", 1e-3), ("q8", 1 / 127)):
        if encoding == "f16" and max(np.abs(v).max() for v in delta.values()) > 6e4:
            continue
        back = Update.decode(Update.from_delta(delta, encoding=encoding, **fields).encode())
        for name, arr in back.dense_delta().items():
            peak = float(np.abs(delta[name]).max())
            # f16 is relative per element, q8 relative to the tensor's peak.
            bound = rel * np.abs(delta[name]) + 1e-6 if encoding == "f16" else rel * peak * 0.51
            assert (np.abs(arr - delta[name]) <= bound + 1e-7).all()


def test_tensor_decoding_does_not_copy() -> None:
    ext = encode_tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    arr = decode_tensor(ext, "t")
    assert arr.base is not None and not arr.flags.writeable
    assert np.shares_memory(arr, np.frombuffer(ext.data, dtype=np.uint8))
    np.testing.assert_array_equal(arr, np.arange(6).reshape(2, 3))


def test_sha256_covers_weights_in_order() -> None:
    w = init_weights(ARCH, 0)
    flipped = dict(reversed(list(w.items())))
    assert weights_sha256(w) != weights_sha256(flipped)
    assert len(weights_sha256(w)) == 64


# -- every rejection has its reason ----------------------------------------------------


def _update_map(**changes) -> dict:
    w = init_weights(ARCH, 0)
    u = Update.from_delta(
        w, device="d1", seq=1, base_version=0, num_samples=4, steps=1, loss=0.1, sent_at=1.0
    )
    body = {"v": 1, "kind": "update", **u.to_map()}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not _DROP}


_DROP = object()


def _pack(body: dict) -> bytes:
    return msgpack.packb(body, use_bin_type=True, default=lambda a: encode_tensor(a))


def _tensor_ext(code: int, shape: tuple[int, ...], data: bytes) -> msgpack.ExtType:
    return msgpack.ExtType(1, struct.pack(f"<BB{len(shape)}I", code, len(shape), *shape) + data)


BAD = {
    "too_large": b"\x80" * 100,
    "malformed": b"\xc1",
    "not_a_map": msgpack.packb([1, 2, 3]),
    "bad_version": _pack(_update_map(v=2)),
    "bad_kind": _pack(_update_map(kind="global_model")),
    "missing_field": _pack(_update_map(seq=_DROP)),
    "unknown_field": _pack(_update_map(extra=1)),
    "bad_type": _pack(_update_map(seq="1")),
    "bad_value": _pack(_update_map(num_samples=0)),
    "bad_dtype": _pack(
        _update_map(delta={k: v.astype(np.float16) for k, v in init_weights(ARCH, 0).items()})
    ),
    "bad_shape": _pack(_update_map(delta={"w0": np.zeros((4, 3), np.float32)})),
    "non_finite": _pack(
        _update_map(delta={**init_weights(ARCH, 0), "b0": np.array([0, np.nan, 0], np.float32)})
    ),
    "bad_tensor": _pack(_update_map(delta={"w0": _tensor_ext(1, (4, 3), b"\0" * 7)})),
    "bad_ext": _pack(_update_map(delta={"w0": msgpack.ExtType(7, b"\1\0")})),
}


@pytest.mark.parametrize("reason", sorted(BAD))
def test_each_rejection_has_a_stable_reason(reason: str) -> None:
    limit = 50 if reason == "too_large" else 1 << 20
    with pytest.raises(WireError) as err:
        Update.decode(BAD[reason], shapes=SHAPES, max_bytes=limit)
    assert err.value.reason == reason


def test_global_model_checksum_is_verified() -> None:
    model = GlobalModel.build(1, ARCH, init_weights(ARCH, 0), Hyper())
    body = {"v": 1, "kind": "global_model", **model.to_map()}
    body["sha256"] = "0" * 64
    with pytest.raises(WireError) as err:
        GlobalModel.decode(_pack(body))
    assert err.value.reason == "bad_checksum"


def test_global_model_rejects_weights_that_do_not_fit_its_arch() -> None:
    model = GlobalModel.build(1, ARCH, init_weights(ARCH, 0), Hyper())
    body = {"v": 1, "kind": "global_model", **model.to_map()}
    body["arch"] = {"kind": "mlp", "layers": [4, 5, 2], "activation": "relu"}
    with pytest.raises(WireError) as err:
        GlobalModel.decode(_pack(body))
    assert err.value.reason == "bad_shape"


def test_size_bombs_are_refused_before_allocation() -> None:
    # A map header claiming 2**32-1 entries, and a str header claiming 4 GiB.
    for data in (b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff" + b"x" * 10):
        with pytest.raises(WireError) as err:
            Update.decode(data)
        assert err.value.reason == "malformed"
    # A tensor whose shape claims 2**64 elements but carries 4 bytes.
    bomb = _pack(_update_map(delta={"w0": _tensor_ext(1, (2**32 - 1, 2**32 - 1), b"\0" * 4)}))
    with pytest.raises(WireError) as err:
        Update.decode(bomb)
    assert err.value.reason == "bad_tensor"


# -- fuzzing: nothing but WireError, ever ---------------------------------------------

VALID = [
    GlobalModel.build(7, ARCH, init_weights(ARCH, 1), Hyper(), created_at=5.0).encode(),
    _pack(_update_map()),
    DeviceStatus("d", "idle", "0.1", 3, 10, 4, 0.2, 1.0, 100, 5.0).encode(),
]


def _decode_all(data: bytes) -> None:
    for cls in MESSAGES.values():
        with contextlib.suppress(WireError):
            cls.decode(data)
    with contextlib.suppress(WireError):
        Update.decode(data, shapes=SHAPES)
    with contextlib.suppress(WireError):
        decode_any(data)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    _decode_all(data)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, 10**6),
)
def test_mutated_and_truncated_payloads_raise_only_wire_error(
    valid: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(valid)
    for pos, byte in flips:
        data[pos % len(data)] = byte
    _decode_all(bytes(data))
    _decode_all(bytes(data[: cut % len(data)]))


@settings(max_examples=300)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats()
        | st.text()
        | st.binary(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    )
)
def test_arbitrary_msgpack_values_raise_only_wire_error(value) -> None:
    _decode_all(msgpack.packb(value, use_bin_type=True))
    if isinstance(value, dict):
        _decode_all(msgpack.packb({"v": 1, "kind": "update", **value}, use_bin_type=True))


# -- device_status: the error state and its optional reason and message -----------------


def test_an_error_status_round_trips_with_its_reason_and_message():
    status = DeviceStatus(
        "d", "error", "0.1", 3, 10, 4, None, None, None, 5.0, "hyper_limit", "epochs=1000"
    )
    back = DeviceStatus.decode(status.encode())
    assert (back.state, back.reason, back.message) == ("error", "hyper_limit", "epochs=1000")


def test_a_status_without_reason_is_written_as_before_and_read_from_older_encoders():
    status = DeviceStatus("d", "idle", "0.1", 3, 10, 4, 0.2, 1.0, 100, 5.0)
    before = ["device", "state", "agent_version", "model_version", "samples", "last_seq"]
    before += ["last_loss", "cpu", "rss", "at"]
    old = {"v": 1, "kind": "device_status", **{k: getattr(status, k) for k in before}}
    payload = msgpack.packb(old, use_bin_type=True)  # what an encoder before the addition wrote
    assert status.encode() == payload
    back = DeviceStatus.decode(payload)
    assert back == status and back.reason is None and back.message is None


@pytest.mark.parametrize(
    ("field", "value"), [("reason", "x" * 65), ("message", "m" * 257), ("reason", 3)]
)
def test_status_reason_and_message_are_checked(field, value):
    body = msgpack.unpackb(DeviceStatus("d", "error", "0", 1, 1, 1, None, None, None, 1.0).encode())
    body[field] = value
    with pytest.raises(WireError) as err:
        DeviceStatus.decode(msgpack.packb(body, use_bin_type=True))
    assert err.value.reason in ("bad_value", "bad_type")
