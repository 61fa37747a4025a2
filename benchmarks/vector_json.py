"""The JSON side of docs/wire-vectors: a decoded value as JSON, and the files' layout."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from fedmq.envelope import Message


def to_json(value: Any) -> Any:
    """A decoded value as JSON: tensors become ``{"dtype", "shape", "values"}``.

    ``values`` lists the elements in C order; each float is the exact value of its
    float32 or float16 element (JSON numbers parse back to it without loss).
    """
    if isinstance(value, Message):
        return to_json({"v": 1, "kind": value.KIND, **value.to_map()})
    if isinstance(value, np.ndarray):
        return {
            "dtype": value.dtype.name,
            "shape": list(value.shape),
            "values": [x.item() for x in value.reshape(-1)],
        }
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def dump(obj: Any) -> bytes:
    """``obj`` as the vector files write it: indented, each list of numbers on one line."""
    text = json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False)
    # One line per list of numbers: the files stay short enough to read.
    text = re.sub(r"\[\s+([-0-9.e+,\s]*?)\s+\]", lambda m: f"[{' '.join(m[1].split())}]", text)
    return (text + "\n").encode()
