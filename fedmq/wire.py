"""Wire format v1: every payload fedmq puts on MQTT, except the raw ONNX bytes.

A payload is one msgpack map with ``"v": 1`` and a ``"kind"``. Tensors are msgpack
ext type 1: dtype code (u8), ndim (u8), shape (ndim x u32 LE), raw LE data. The
byte-level specification is ``docs/wire.md``; this module is its only implementation.

Decoding is defensive because the bytes come from the network: the size limit is
checked before parsing, msgpack's own length limits stop size bombs, every field is
type- and range-checked, and any failure is a ``WireError`` with a stable reason.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import msgpack
import numpy as np

from fedmq.errors import ModelError, WireError
from fedmq.model import Arch
from fedmq.training import Hyper

VERSION = 1
TENSOR_EXT = 1
MAX_BYTES = 8 * 1024 * 1024
MAX_NDIM = 8
MAX_STR = 4096
MAX_ITEMS = 4096
MAX_STATUS_MESSAGE = 256

DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f2"),
    3: np.dtype("i1"),
    4: np.dtype("u1"),
    5: np.dtype("<i4"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in DTYPES.items()}
ENCODINGS = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2"), "q8": np.dtype("i1")}
DEVICE_STATES = ("online", "training", "idle", "offline", "error")
AGGREGATOR_STATES = ("starting", "serving", "stopping", "offline")

Tensors = dict[str, np.ndarray]


# -- tensors ----------------------------------------------------------------------------


def encode_tensor(arr: np.ndarray) -> msgpack.ExtType:
    """Pack one array as ext type 1 (little-endian, C order)."""
    arr = np.asarray(arr)
    code = _CODES.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise WireError("bad_dtype", f"dtype {arr.dtype} cannot go on the wire")
    if arr.ndim > MAX_NDIM:
        raise WireError("bad_shape", f"at most {MAX_NDIM} dimensions, got {arr.ndim}")
    header = struct.pack(f"<BB{arr.ndim}I", code, arr.ndim, *arr.shape)
    data = np.ascontiguousarray(arr, dtype=DTYPES[code]).tobytes()
    return msgpack.ExtType(TENSOR_EXT, header + data)


def decode_tensor(ext: object, where: str) -> np.ndarray:
    """Unpack ext type 1 without copying the data (the result is read-only)."""
    if not isinstance(ext, msgpack.ExtType):
        raise WireError("bad_type", f"{where} must be a tensor (msgpack ext type 1)")
    if ext.code != TENSOR_EXT:
        raise WireError("bad_ext", f"{where}: ext type {ext.code}, expected {TENSOR_EXT}")
    data = ext.data
    if len(data) < 2:
        raise WireError("bad_tensor", f"{where}: tensor header truncated")
    code, ndim = data[0], data[1]
    dtype = DTYPES.get(code)
    if dtype is None:
        raise WireError("bad_dtype", f"{where}: unknown dtype code {code}")
    if ndim > MAX_NDIM:
        raise WireError("bad_tensor", f"{where}: {ndim} dimensions, at most {MAX_NDIM}")
    offset = 2 + 4 * ndim
    if len(data) < offset:
        raise WireError("bad_tensor", f"{where}: tensor shape truncated")
    shape = struct.unpack_from(f"<{ndim}I", data, 2)
    count = math.prod(shape)
    if len(data) - offset != count * dtype.itemsize:
        raise WireError(
            "bad_tensor",
            f"{where}: shape {shape} needs {count * dtype.itemsize} data bytes, "
            f"got {len(data) - offset}",
        )
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)


def weights_sha256(weights: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of the weights' float32 little-endian bytes, concatenated in mapping order."""
    h = hashlib.sha256()
    for arr in weights.values():
        h.update(np.ascontiguousarray(arr, dtype="<f4").tobytes())
    return h.hexdigest()


# -- field checks ------------------------------------------------------------------------

Check = Callable[[Any, str], Any]


def _int(lo: int | None = None, hi: int | None = None) -> Check:
    def check(value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise WireError("bad_type", f"{name} must be an integer")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise WireError("bad_value", f"{name}={value} is outside [{lo}, {hi}]")
        return value

    return check


def _float(lo: float | None = None) -> Check:
    def check(value: Any, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise WireError("bad_type", f"{name} must be a number")
        value = float(value)
        if not math.isfinite(value):
            raise WireError("non_finite", f"{name} is not finite")
        if lo is not None and value < lo:
            raise WireError("bad_value", f"{name}={value} is below {lo}")
        return value

    return check


def _str(choices: tuple[str, ...] | None = None, max_len: int = 256) -> Check:
    def check(value: Any, name: str) -> str:
        if not isinstance(value, str):
            raise WireError("bad_type", f"{name} must be a string")
        if len(value) > max_len:
            raise WireError("bad_value", f"{name} is longer than {max_len} characters")
        if choices is not None and value not in choices:
            raise WireError("bad_value", f"{name}={value!r} is not one of {choices}")
        return value

    return check


def _optional(inner: Check) -> Check:
    def check(value: Any, name: str) -> Any:
        return None if value is None else inner(value, name)

    return check


def _map(value_check: Check, max_items: int = 256) -> Check:
    def check(value: Any, name: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise WireError("bad_type", f"{name} must be a map")
        if len(value) > max_items:
            raise WireError("bad_value", f"{name} has more than {max_items} entries")
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or not 0 < len(key) <= 128:
                raise WireError("bad_type", f"{name} keys must be strings of 1..128 characters")
            out[key] = value_check(item, f"{name}.{key}")
        return out

    return check


def _scalar(value: Any, name: str) -> Any:
    if value is None or isinstance(value, bool | str):
        return _str(max_len=256)(value, name) if isinstance(value, str) else value
    if isinstance(value, int):
        return value
    return _float()(value, name)


def _tensors(value: Any, name: str) -> Tensors:
    return _map(lambda v, n: decode_tensor(v, n))(value, name)


_device = _str(max_len=64)
_time = _float(lo=0.0)


# -- messages ----------------------------------------------------------------------------

M = TypeVar("M", bound="Message")


class Message:
    """Shared encode/decode; each subclass lists its fields and their checks."""

    KIND: ClassVar[str]
    FIELDS: ClassVar[dict[str, Check]]
    # Fields added compatibly within v1: absent means None, and None is not written, so
    # a payload without them is byte for byte what an older encoder wrote.
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def to_map(self) -> dict[str, Any]:
        return {
            name: getattr(self, name)
            for name in self.FIELDS
            if name not in self.OPTIONAL or getattr(self, name) is not None
        }

    def encode(self) -> bytes:
        body = {"v": VERSION, "kind": self.KIND, **self.to_map()}
        return msgpack.packb(body, use_bin_type=True, default=_default)

    @classmethod
    def decode(cls: type[M], data: bytes, *, max_bytes: int = MAX_BYTES, **context: Any) -> M:
        body = _unpack(data, max_bytes)
        if body.get("v") != VERSION:
            raise WireError("bad_version", f"wire version {body.get('v')!r}, expected {VERSION}")
        if body.get("kind") != cls.KIND:
            raise WireError("bad_kind", f"kind {body.get('kind')!r}, expected {cls.KIND!r}")
        unknown = set(body) - set(cls.FIELDS) - {"v", "kind"}
        if unknown:
            raise WireError("unknown_field", f"unknown field(s) {sorted(map(str, unknown))}")
        values = {}
        for name, check in cls.FIELDS.items():
            if name in body:
                values[name] = check(body[name], name)
            elif name in cls.OPTIONAL:
                values[name] = None
            else:
                raise WireError("missing_field", f"{cls.KIND} needs field {name!r}")
        return cls._build(values, **context)

    @classmethod
    def _build(cls: type[M], values: dict[str, Any]) -> M:
        return cls(**values)


def _default(obj: object) -> object:
    if isinstance(obj, np.ndarray):
        return encode_tensor(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _unpack(data: bytes, max_bytes: int) -> dict[Any, Any]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError("bad_type", "a payload must be bytes")
    if len(data) > max_bytes:
        raise WireError("too_large", f"payload of {len(data)} bytes exceeds {max_bytes}")
    try:
        body = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_STR,
            max_bin_len=0,
            max_array_len=MAX_ITEMS,
            max_map_len=MAX_ITEMS,
            max_ext_len=max_bytes,
        )
    except Exception as exc:  # msgpack raises many types for bad bytes; all mean the same
        raise WireError("malformed", f"not a msgpack payload: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise WireError("not_a_map", "a payload must be a msgpack map")
    return body


def _check_against(tensors: Tensors, shapes: Mapping[str, tuple[int, ...]], what: str) -> None:
    if list(tensors) != list(shapes):
        raise WireError(
            "bad_shape", f"{what} names {list(tensors)} do not match the model {list(shapes)}"
        )
    for name, shape in shapes.items():
        if tensors[name].shape != tuple(shape):
            raise WireError(
                "bad_shape",
                f"{what} {name} has shape {tensors[name].shape}, the model needs {tuple(shape)}",
            )


def _check_finite(tensors: Tensors, what: str) -> None:
    for name, arr in tensors.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise WireError("non_finite", f"{what} {name} holds NaN or infinity")


@dataclass
class Update(Message):
    """A device's delta (local − base) trained from global version ``base_version``.

    ``delta`` holds the tensors as sent (float32, float16, or int8 with one float32
    scale per tensor in ``scales`` for ``q8``); ``dense_delta()`` gives float32.
    """

    device: str
    seq: int
    base_version: int
    num_samples: int
    steps: int
    loss: float | None
    encoding: str
    delta: Tensors
    metrics: dict[str, float] = field(default_factory=dict)
    sent_at: float = 0.0
    scales: dict[str, float] = field(default_factory=dict)

    KIND: ClassVar[str] = "update"
    FIELDS: ClassVar[dict[str, Check]] = {
        "device": _device,
        "seq": _int(0, 2**63 - 1),
        "base_version": _int(0, 2**63 - 1),
        "num_samples": _int(1, 2**31 - 1),
        "steps": _int(0, 2**31 - 1),
        "loss": _optional(_float()),
        "encoding": _str(tuple(ENCODINGS)),
        "delta": _tensors,
        "metrics": _map(_float(), max_items=64),
        "sent_at": _time,
        "scales": _map(_float(lo=0.0)),
    }

    @classmethod
    def from_delta(cls, delta: Mapping[str, np.ndarray], *, encoding: str = "f32", **fields: Any):
        """Encode a float delta as ``encoding`` (q8: symmetric per-tensor int8)."""
        if encoding not in ENCODINGS:
            raise WireError("bad_value", f"encoding must be one of {tuple(ENCODINGS)}")
        tensors: Tensors = {}
        scales: dict[str, float] = {}
        for name, arr in delta.items():
            arr = np.asarray(arr, dtype=np.float32)
            if not np.isfinite(arr).all():
                raise WireError("non_finite", f"delta {name} holds NaN or infinity")
            if encoding == "q8":
                peak = float(np.abs(arr).max(initial=0.0))
                scale = peak / 127.0 if peak > 0 else 1.0
                # float64: a subnormal peak gives a scale that would be 0 in float32.
                q = np.rint(arr.astype(np.float64) / scale)
                tensors[name] = np.clip(q, -127, 127).astype(np.int8)
                scales[name] = scale
            else:
                tensors[name] = arr.astype(ENCODINGS[encoding])
                if not np.isfinite(tensors[name]).all():
                    raise WireError("non_finite", f"delta {name} overflows {encoding}")
        return cls(encoding=encoding, delta=tensors, scales=scales, **fields)

    def dense_delta(self) -> Tensors:
        """The delta as float32 arrays (dequantised for q8)."""
        if self.encoding == "q8":
            return {
                n: a.astype(np.float32) * np.float32(self.scales[n]) for n, a in self.delta.items()
            }
        return {n: a.astype(np.float32) for n, a in self.delta.items()}

    @classmethod
    def _build(
        cls, values: dict[str, Any], shapes: Mapping[str, tuple[int, ...]] | None = None
    ) -> Update:
        update = cls(**values)
        want = ENCODINGS[update.encoding]
        for name, arr in update.delta.items():
            if arr.dtype != want:
                raise WireError(
                    "bad_dtype",
                    f"delta {name} is {arr.dtype}, encoding {update.encoding} needs {want}",
                )
        if update.encoding == "q8":
            if set(update.scales) != set(update.delta):
                raise WireError("missing_field", "q8 needs exactly one scale per delta tensor")
            if any(s <= 0 for s in update.scales.values()):
                raise WireError("bad_value", "q8 scales must be positive")
        elif update.scales:
            raise WireError("bad_value", f"encoding {update.encoding} carries no scales")
        if shapes is not None:
            _check_against(update.delta, shapes, "delta")
        _check_finite(update.delta, "delta")
        return update


def _arch(value: Any, name: str) -> Arch:
    if not isinstance(value, dict) or set(value) != {"kind", "layers", "activation"}:
        raise WireError("bad_type", f"{name} must be a map of kind, layers, activation")
    layers = value["layers"]
    if not isinstance(layers, list) or not all(
        isinstance(w, int) and not isinstance(w, bool) for w in layers
    ):
        raise WireError("bad_type", f"{name}.layers must be a list of integers")
    try:
        return Arch(
            _str()(value["kind"], "kind"), tuple(layers), _str()(value["activation"], "act")
        )
    except ModelError as exc:
        raise WireError("bad_value", f"{name}: {exc.message}") from None


_HYPER_FIELDS = {"lr": float, "epochs": int, "batch": int, "mu": float, "clip": float}


def _hyper(value: Any, name: str) -> Hyper:
    if not isinstance(value, dict) or not set(_HYPER_FIELDS) <= set(value) <= {
        *_HYPER_FIELDS,
        "noise",
    }:
        raise WireError("bad_type", f"{name} must be a map of {', '.join(_HYPER_FIELDS)} [noise]")
    args = {}
    for key, item in value.items():
        if _HYPER_FIELDS.get(key) is int:
            args[key] = _int()(item, f"{name}.{key}")
        else:
            args[key] = _float()(item, f"{name}.{key}")
    try:
        return Hyper(**args)
    except ModelError as exc:
        raise WireError("bad_value", f"{name}: {exc.message}") from None


def _sha(value: Any, name: str) -> str:
    value = _str(max_len=64)(value, name)
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise WireError("bad_value", f"{name} must be 64 lowercase hex digits")
    return value


@dataclass
class GlobalModel(Message):
    """The global model at ``version``; ``sha256`` covers the weights (``weights_sha256``)."""

    version: int
    arch: Arch
    weights: Tensors
    sha256: str
    hyper: Hyper
    created_at: float

    KIND: ClassVar[str] = "global_model"
    FIELDS: ClassVar[dict[str, Check]] = {
        "version": _int(0, 2**63 - 1),
        "arch": _arch,
        "weights": _tensors,
        "sha256": _sha,
        "hyper": _hyper,
        "created_at": _time,
    }

    @classmethod
    def build(
        cls,
        version: int,
        arch: Arch,
        weights: Mapping[str, np.ndarray],
        hyper: Hyper,
        *,
        created_at: float = 0.0,
    ) -> GlobalModel:
        ordered = {
            name: np.asarray(weights[name], dtype=np.float32) for name in arch.param_shapes()
        }
        _check_against(ordered, arch.param_shapes(), "weights")
        _check_finite(ordered, "weights")
        return cls(version, arch, ordered, weights_sha256(ordered), hyper, created_at)

    def to_map(self) -> dict[str, Any]:
        out = super().to_map()
        out["arch"] = self.arch.to_dict()
        hyper = self.hyper.to_dict()
        if self.hyper.noise:
            hyper["noise"] = self.hyper.noise
        out["hyper"] = hyper
        return out

    @classmethod
    def _build(cls, values: dict[str, Any]) -> GlobalModel:
        model = cls(**values)
        for name, arr in model.weights.items():
            if arr.dtype != np.float32:
                raise WireError("bad_dtype", f"weights {name} is {arr.dtype}, must be float32")
        _check_against(model.weights, model.arch.param_shapes(), "weights")
        _check_finite(model.weights, "weights")
        if weights_sha256(model.weights) != model.sha256:
            raise WireError("bad_checksum", "the weights do not match their sha256")
        return model


@dataclass
class DeviceStatus(Message):
    """A device's retained status; its last will carries ``state="offline"``.

    In state ``error``, ``reason`` is a stable code and ``message`` one line for people.
    """

    device: str
    state: str
    agent_version: str
    model_version: int
    samples: int
    last_seq: int
    last_loss: float | None
    cpu: float | None
    rss: int | None
    at: float
    reason: str | None = None
    message: str | None = None

    KIND: ClassVar[str] = "device_status"
    FIELDS: ClassVar[dict[str, Check]] = {
        "device": _device,
        "state": _str(DEVICE_STATES),
        "agent_version": _str(max_len=64),
        "model_version": _int(-1, 2**63 - 1),
        "samples": _int(0, 2**63 - 1),
        "last_seq": _int(-1, 2**63 - 1),
        "last_loss": _optional(_float()),
        "cpu": _optional(_float(lo=0.0)),
        "rss": _optional(_int(0, 2**63 - 1)),
        "at": _time,
        "reason": _optional(_str(max_len=64)),
        "message": _optional(_str(max_len=MAX_STATUS_MESSAGE)),
    }
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"reason", "message"})


@dataclass
class AggregatorStatus(Message):
    """The aggregator's retained status; its last will carries ``state="offline"``."""

    state: str
    strategy: str
    params: dict[str, Any]
    version: int
    accepted: int
    rejected: dict[str, int]
    last_accuracy: float | None
    last_loss: float | None
    started_at: float
    at: float

    KIND: ClassVar[str] = "aggregator_status"
    FIELDS: ClassVar[dict[str, Check]] = {
        "state": _str(AGGREGATOR_STATES),
        "strategy": _str(max_len=64),
        "params": _map(_scalar, max_items=64),
        "version": _int(0, 2**63 - 1),
        "accepted": _int(0, 2**63 - 1),
        "rejected": _map(_int(0, 2**63 - 1)),
        "last_accuracy": _optional(_float()),
        "last_loss": _optional(_float()),
        "started_at": _time,
        "at": _time,
    }


@dataclass
class DeviceLedger(Message):
    """The aggregator's retained view of one device's contributions."""

    device: str
    accepted: int
    rejected: dict[str, int]
    last_seq: int
    last_staleness: int | None
    samples: int
    first_seen: float
    last_seen: float

    KIND: ClassVar[str] = "device_ledger"
    FIELDS: ClassVar[dict[str, Check]] = {
        "device": _device,
        "accepted": _int(0, 2**63 - 1),
        "rejected": _map(_int(0, 2**63 - 1)),
        "last_seq": _int(-1, 2**63 - 1),
        "last_staleness": _optional(_int(0, 2**63 - 1)),
        "samples": _int(0, 2**63 - 1),
        "first_seen": _time,
        "last_seen": _time,
    }


MESSAGES: dict[str, type[Message]] = {
    m.KIND: m for m in (Update, GlobalModel, DeviceStatus, AggregatorStatus, DeviceLedger)
}


def decode_any(data: bytes, *, max_bytes: int = MAX_BYTES) -> Message:
    """Decode a payload of any kind (for inspection tools)."""
    kind = _unpack(data, max_bytes).get("kind")
    cls = MESSAGES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError("bad_kind", f"unknown kind {kind!r}")
    return cls.decode(data, max_bytes=max_bytes)
