"""Wire messages as plain JSON, for people and scripts (``fedmq inspect``, ``--json``).

Tensors are summarised (dtype, shape, L2 norm), never dumped: a model is thousands of
numbers that say nothing to a reader.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from fedmq.chunks import KINDS, kind_of
from fedmq.errors import TopicError, WireError
from fedmq.topics import parse
from fedmq.wire import Message, decode_any


def tensor_summary(arr: np.ndarray) -> dict[str, Any]:
    values = np.asarray(arr, dtype=np.float64)
    return {
        "dtype": str(arr.dtype),
        "shape": list(arr.shape),
        "norm": float(np.sqrt(np.sum(np.square(values)))) if values.size else 0.0,
    }


def plain(value: Any) -> Any:
    """``value`` with arrays summarised and dataclasses, tuples and NaN made JSON-safe."""
    if isinstance(value, np.ndarray):
        return tensor_summary(value)
    if isinstance(value, bytes):  # a chunk's piece of a message: its size says enough
        return {"bytes": len(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return plain(value.item())
    return value


def message_json(message: Message) -> dict[str, Any]:
    return {"kind": message.KIND, **plain(message)}


def payload_json(topic: str, payload: bytes) -> dict[str, Any]:
    """One received payload as JSON; what cannot be decoded says why instead of failing."""
    out: dict[str, Any] = {"topic": topic, "bytes": len(payload)}
    try:
        kind = parse(topic).kind
    except TopicError as exc:
        return {**out, "error": str(exc)}
    if kind == "model_onnx":
        return {**out, "kind": "onnx"}
    if not payload:
        return {**out, "kind": "cleared"}
    try:
        cls = KINDS.get(str(kind_of(payload)))  # a chunk or a manifest (wire.md 3.8)
        message = decode_any(payload) if cls is None else cls.decode(payload)
        return {**out, **message_json(message)}
    except WireError as exc:
        return {**out, "error": str(exc), "reason": exc.reason}
