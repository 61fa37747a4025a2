"""Reading network bytes for ``fedmq.wire``: the msgpack parse and the field checks.

``parse_msgpack`` applies the limits and refuses duplicate keys, non-str keys and bin
(docs/wire.md sections 1 and 5). Each check (one per value type of docs/wire.md) takes
a decoded value and the field's name and returns the typed value, or raises
``WireError`` with the reason the spec gives for that defect.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import msgpack
import numpy as np

from fedmq.errors import DataError, ModelError, TopicError, WireError
from fedmq.model import Arch
from fedmq.preprocess import Standardizer
from fedmq.schema import VERSION as SCHEMA_VERSION
from fedmq.schema import Schema
from fedmq.tensors import Tensors, decode_tensor
from fedmq.topics import validate_device_id
from fedmq.training import Hyper

MAX_STR = 4096
MAX_ITEMS = 4096

Check = Callable[[Any, str], Any]


def as_int(lo: int | None = None, hi: int | None = None) -> Check:
    def check(value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise WireError("bad_type", f"{name} must be an integer")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise WireError("bad_value", f"{name}={value} is outside [{lo}, {hi}]")
        return value

    return check


def as_float(lo: float | None = None) -> Check:
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


def as_str(choices: tuple[str, ...] | None = None, max_len: int = 256) -> Check:
    def check(value: Any, name: str) -> str:
        if not isinstance(value, str):
            raise WireError("bad_type", f"{name} must be a string")
        if len(value) > max_len:
            raise WireError("bad_value", f"{name} is longer than {max_len} characters")
        if choices is not None and value not in choices:
            raise WireError("bad_value", f"{name}={value!r} is not one of {choices}")
        return value

    return check


def optional(inner: Check) -> Check:
    def check(value: Any, name: str) -> Any:
        return None if value is None else inner(value, name)

    return check


def as_map(value_check: Check, max_items: int = 256) -> Check:
    def check(value: Any, name: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise WireError("bad_type", f"{name} must be a map")
        if len(value) > max_items:
            raise WireError("bad_value", f"{name} has more than {max_items} entries")
        out = {}
        for key, item in value.items():
            if not 0 < len(key) <= 128:  # keys are str: _pairs refuses any other
                raise WireError("bad_value", f"{name} keys must have 1..128 characters")
            out[key] = value_check(item, f"{name}.{key}")
        return out

    return check


def as_scalar(value: Any, name: str) -> Any:
    if value is None or isinstance(value, bool | str):
        return as_str(max_len=256)(value, name) if isinstance(value, str) else value
    if isinstance(value, int):
        return value
    return as_float()(value, name)


def as_tensors(value: Any, name: str) -> Tensors:
    return as_map(lambda v, n: decode_tensor(v, n))(value, name)


def as_device(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise WireError("bad_type", f"{name} must be a string")
    try:
        return validate_device_id(value)
    except TopicError as exc:
        raise WireError("bad_device_id", f"{name}: {exc.message}") from None


def as_hex(digits: int) -> Check:
    def check(value: Any, name: str) -> str:
        value = as_str(max_len=digits)(value, name)
        if len(value) != digits or any(c not in "0123456789abcdef" for c in value):
            raise WireError("bad_value", f"{name} must be {digits} lowercase hex digits")
        return value

    return check


as_time = as_float(lo=0.0)


def _keys(value: Any, name: str, required: set[str], optional: frozenset = frozenset()) -> None:
    if not isinstance(value, dict):
        raise WireError("bad_type", f"{name} must be a map")
    if missing := required - set(value):
        raise WireError("missing_field", f"{name} needs field(s) {sorted(missing)}")
    if unknown := set(value) - required - optional:
        raise WireError("unknown_field", f"{name} has unknown field(s) {sorted(unknown)}")


def as_arch(value: Any, name: str) -> Arch:
    _keys(value, name, {"kind", "layers", "activation"}, frozenset({"schema"}))
    layers = value["layers"]
    if not isinstance(layers, list):
        raise WireError("bad_type", f"{name}.layers must be an array of integers")
    widths = tuple(as_int()(w, f"{name}.layers") for w in layers)
    kind = as_str()(value["kind"], f"{name}.kind")
    activation = as_str()(value["activation"], f"{name}.activation")
    schema = _as_schema(value["schema"], f"{name}.schema") if "schema" in value else None
    try:
        return Arch(kind, widths, activation, schema)
    except ModelError as exc:
        raise WireError("bad_value", f"{name}: {exc.message}") from None


def _as_schema(value: Any, name: str) -> Schema:
    _keys(value, name, {"features", "label", "task"}, frozenset({"classes"}))
    for key in ("features", "classes"):
        if key in value and not isinstance(value[key], list):
            raise WireError("bad_type", f"{name}.{key} must be an array of strings")
    if not all(isinstance(v, str) for v in [*value["features"], *value.get("classes", [])]):
        raise WireError("bad_type", f"{name}: feature and class names must be strings")
    try:
        return Schema.from_dict({"version": SCHEMA_VERSION, **value}, name)
    except DataError as exc:
        raise WireError("bad_value", exc.message) from None


_HYPER_INTS = {"epochs", "batch"}


def as_hyper(value: Any, name: str) -> Hyper:
    _keys(value, name, {"lr", "epochs", "batch", "mu", "clip"}, frozenset({"noise"}))
    args = {
        key: (as_int() if key in _HYPER_INTS else as_float())(item, f"{name}.{key}")
        for key, item in value.items()
    }
    try:
        return Hyper.from_wire(args)
    except ModelError as exc:
        raise WireError("bad_value", f"{name}: {exc.message}") from None


def check_against(tensors: Tensors, shapes: Mapping[str, tuple[int, ...]], what: str) -> None:
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


def check_finite(tensors: Tensors, what: str) -> None:
    for name, arr in tensors.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise WireError("non_finite", f"{what} {name} holds NaN or infinity")


def _pairs(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    # Called by msgpack for every map, so another decoder cannot see a different value.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if not isinstance(key, str):
            raise WireError("malformed", "map keys must be msgpack str")
        if key in out:
            raise WireError("duplicate_key", f"key {key[:32]!r} appears twice in one map")
        if isinstance(value, bytes):
            raise WireError("malformed", "msgpack bin is not allowed")
        out[key] = value
    return out


def _items(items: list[Any]) -> list[Any]:
    if any(isinstance(item, bytes) for item in items):
        raise WireError("malformed", "msgpack bin is not allowed")
    return items


def parse_msgpack(data: bytes, max_bytes: int) -> Any:
    """One msgpack value within the limits; duplicate keys, non-str keys and bin refused."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError("malformed", "a payload must be bytes")
    if len(data) > max_bytes:
        raise WireError("too_large", f"payload of {len(data)} bytes exceeds {max_bytes}")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_STR,
            max_bin_len=0,
            max_array_len=MAX_ITEMS,
            max_map_len=MAX_ITEMS,
            max_ext_len=max_bytes,
            object_pairs_hook=_pairs,
            list_hook=_items,
        )
    except WireError:
        raise
    except Exception as exc:  # msgpack raises many types for bad bytes; all mean the same
        raise WireError("malformed", f"not a msgpack payload: {type(exc).__name__}") from None
    if isinstance(value, bytes):
        raise WireError("malformed", "msgpack bin is not allowed")
    return value


def as_prep(value: Any, name: str) -> Standardizer:
    """``{"mean": f32[n], "scale": f32[n]}``: finite, scale > 0 (docs/wire.md 3.2)."""
    if not isinstance(value, dict) or set(value) != {"mean", "scale"}:
        raise WireError("bad_value", f"{name} must be a map of exactly mean and scale")
    tensors = as_tensors(value, name)
    for key, arr in tensors.items():
        if arr.dtype != np.float32 or arr.ndim != 1:
            raise WireError("bad_dtype", f"{name}.{key} must be a 1-D float32 tensor")
    try:
        return Standardizer(tensors["mean"], tensors["scale"])
    except DataError as exc:
        raise WireError("bad_value", f"{name}: {exc.message}") from None
