"""Wire format v1: round trips, strictness properties, and fuzzing of the decoders."""

from __future__ import annotations

import contextlib
import dataclasses

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmq.errors import TopicError, WireError
from fedmq.model import Arch, init_weights
from fedmq.tensors import decode_tensor, dequantize_q8, quantize_q8
from fedmq.topics import validate_device_id
from fedmq.training import Hyper
from fedmq.wire import (
    DEVICE_STATES,
    MESSAGES,
    AggregatorStatus,
    DeviceLedger,
    DeviceStatus,
    GlobalModel,
    Update,
    decode_any,
    encode_tensor,
    new_run,
    weights_digest,
)
from tests.fedmq.wire_payloads import (
    ARCH,
    DROP,
    RUN,
    SHAPES,
    pack,
    pack_pairs,
    q8_map,
    tensor_ext,
    update_map,
)

finite32 = st.floats(-1e6, 1e6, allow_nan=False, width=32)
times = st.floats(0, 4e9, allow_nan=False)
ids = st.text(
    st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="+#/$"),
    min_size=1,
    max_size=64,
).filter(lambda s: s.isprintable())
small_int = st.integers(0, 2**40)
runs = st.text("0123456789abcdef", min_size=16, max_size=16)
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
        dp_clip=draw(st.floats(0, 10)),
    )
    return GlobalModel.build(
        draw(small_int), arch, draw(deltas(arch)), hyper, run=draw(runs), created_at=draw(times)
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
    devices=st.none() | st.dictionaries(st.sampled_from(DEVICE_STATES), small_int),
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


def test_digest_covers_arch_names_shapes_dtypes_and_data() -> None:
    w = init_weights(ARCH, 0)
    base = weights_digest(ARCH, w)
    assert len(base) == 64 and base == weights_digest(ARCH, dict(reversed(list(w.items()))))
    other_act = Arch("mlp", (4, 3, 2), "tanh")
    as_f16 = {k: v.astype(np.float16) for k, v in w.items()}
    data = dict(w, b1=w["b1"] + np.float32(1))
    # w1 (3, 2) reshaped (2, 3) keeps the bytes but not the shape.
    reshaped = dict(w, w1=w["w1"].reshape(2, 3))
    digests = {
        weights_digest(other_act, w),
        weights_digest(ARCH, as_f16),
        weights_digest(ARCH, data),
        weights_digest(ARCH, reshaped),
    }
    assert base not in digests and len(digests) == 4


def test_new_runs_are_random_hex_ids() -> None:
    a, b = new_run(), new_run()
    assert a != b and len(a) == 16 and set(a) <= set("0123456789abcdef")
    for bad in ("", "0" * 15, "0" * 17, "ABCDEF0123456789", "g" * 16):
        with pytest.raises(WireError) as err:
            GlobalModel.build(0, ARCH, init_weights(ARCH, 0), Hyper(), run=bad)
        assert err.value.reason == "bad_value"


@given(st.lists(st.integers(-128, 127), min_size=1, max_size=50), st.floats(1e-30, 1e30))
def test_q8_dequantization_is_float32_q_times_float32_scale(q: list[int], scale: float) -> None:
    got = dequantize_q8(np.array(q, np.int8), scale)
    assert got.dtype == np.float32
    for qi, gi in zip(q, got, strict=True):
        # The exact float32 product: float64 holds float32 x float32 exactly; round once.
        want = np.float32(float(np.float32(qi)) * float(np.float32(scale)))
        assert gi.tobytes() == want.tobytes()


@given(deltas())
def test_q8_scales_are_float32_values(delta: dict[str, np.ndarray]) -> None:
    for arr in delta.values():
        q, scale = quantize_q8(arr)
        assert float(np.float32(scale)) == scale and scale > 0
        assert q.dtype == np.int8 and np.abs(q.astype(int)).max(initial=0) <= 127


# -- strictness, for every message ----------------------------------------------------


def _body(msg) -> dict:
    return {"v": 1, "kind": msg.KIND, **msg.to_map()}


def _refused(data: bytes, cls: type, reason: str) -> None:
    for decode in (cls.decode, decode_any):
        with pytest.raises(WireError) as err:
            decode(data)
        assert err.value.reason == reason, err.value


@given(any_message, st.data())
def test_a_key_twice_is_refused_wherever_it_is(msg, data: st.DataObject) -> None:
    pairs = list(_body(msg).items())
    key, value = data.draw(st.sampled_from(pairs))
    again = data.draw(st.sampled_from([value, None, 0, "x"]))
    pairs.insert(data.draw(st.integers(0, len(pairs))), (key, again))
    _refused(pack_pairs(pairs), type(msg), "duplicate_key")


@given(
    any_message,
    st.sampled_from([True, False, 1.0, 0, 2, -1, 2**64 - 1, "1", None, [1], {"v": 1}, DROP]),
)
def test_only_the_int_1_is_version_1(msg, v: object) -> None:
    body = {k: val for k, val in {**_body(msg), "v": v}.items() if val is not DROP}
    _refused(pack(body), type(msg), "bad_version")


@given(any_message, st.data())
def test_int_fields_take_nothing_but_ints(msg, data: st.DataObject) -> None:
    body = _body(msg)
    ints = [k for k, v in msg.to_map().items() if type(v) is int]
    key = data.draw(st.sampled_from(ints))  # every kind has int fields
    body[key] = data.draw(st.sampled_from([float(body[key]), body[key] % 2 == 1, str(body[key])]))
    _refused(pack(body), type(msg), "bad_type")


bad_ids = st.one_of(
    st.just(""),
    st.text("a", min_size=65, max_size=80),
    st.tuples(ids, st.sampled_from(list("/+#\0 \t\n\x7f"))).map(lambda t: t[0][:40] + t[1]),
    ids.map(lambda s: "$" + s[:63]),
)


@given(st.one_of(updates(), device_statuses, ledgers), bad_ids)
def test_device_ids_follow_the_topic_rules(msg, device: str) -> None:
    _refused(pack({**_body(msg), "device": device}), type(msg), "bad_device_id")


@given(st.text(max_size=70))
def test_the_wire_and_the_topics_agree_on_device_ids(device: str) -> None:
    try:
        validate_device_id(device)
    except TopicError:
        _refused(pack(update_map(device=device)), Update, "bad_device_id")
    else:
        assert Update.decode(pack(update_map(device=device))).device == device


# -- fuzzing: nothing but WireError, ever ---------------------------------------------

VALID = [
    GlobalModel.build(7, ARCH, init_weights(ARCH, 1), Hyper(), run=RUN, created_at=5.0).encode(),
    pack(update_map()),
    pack(q8_map()),
    DeviceStatus("d", "idle", "0.1", 3, 10, 4, 0.2, 1.0, 100, 5.0).encode(),
    DeviceLedger("d", 3, {"old_seq": 1}, 9, 2, 40, 1.0, 2.0).encode(),
    AggregatorStatus("serving", "fedbuff", {"k": 4}, 3, 9, {}, 0.5, None, 1.0, 2.0).encode(),
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


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text()
    | st.binary()
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary())
    | st.builds(msgpack.Timestamp, st.integers(0, 2**34), st.integers(0, 999_999_999))
    | st.builds(lambda c, b: tensor_ext(c, (len(b),), b), st.integers(0, 6), st.binary()),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


@settings(max_examples=300)
@given(msgpack_values)
def test_arbitrary_msgpack_values_raise_only_wire_error(value) -> None:
    _decode_all(msgpack.packb(value, use_bin_type=True))
    if isinstance(value, dict):
        _decode_all(msgpack.packb({"v": 1, "kind": "update", **value}, use_bin_type=True))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(any_message, st.data())
def test_any_field_replaced_by_any_value_raises_only_wire_error(msg, data: st.DataObject) -> None:
    body = _body(msg)
    key = data.draw(st.sampled_from(sorted(body)))
    body[key] = data.draw(msgpack_values)
    _decode_all(pack(body))


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


def test_an_aggregator_status_counts_devices_per_state_any_state_name():
    base = AggregatorStatus("serving", "fedbuff", {}, 3, 9, {}, None, None, 1.0, 2.0)
    ok = dataclasses.replace(base, devices={"idle": 2, "error": 1, "asleep": 1})
    assert AggregatorStatus.decode(ok.encode()).devices == {"idle": 2, "error": 1, "asleep": 1}
    bad = dataclasses.replace(base, devices={"idle": -1})
    with pytest.raises(WireError) as info:
        AggregatorStatus.decode(bad.encode())
    assert info.value.reason == "bad_value"
