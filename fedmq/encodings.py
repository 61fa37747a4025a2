"""Update encodings: how a float32 delta becomes an ``update``'s tensors, and back.

The one place that knows the encodings (docs/wire.md 3.1): the agent's ``encoding``
setting and the simulator parse theirs here, ``fedmq.wire.Update`` encodes, checks and
densifies through here, and the aggregator reads every update through ``Update``.

- ``f32``, ``f16``: the delta itself, as float32 or float16.
- ``q8``: symmetric per-tensor int8 plus one scale per tensor (``fedmq.tensors``).
- ``topk:F`` (wire name ``topk``): per parameter, the ⌈F·n⌉ coordinates of largest
  magnitude, as float16 values plus their flat C-order indices (uint16 for a
  parameter of at most 2¹⁶ elements, uint32 above). float16, not float32, for the
  values: with uint16 indices it is 4 bytes a coordinate instead of 6, and its
  relative rounding error (2⁻¹¹) is far below what sparsification drops; both are
  carried to the next update by error feedback (``fedmq.feedback``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedmq.errors import ConfigError, WireError
from fedmq.tensors import Tensors, check_q8_scale, dequantize_q8, quantize_q8

# The ``encoding`` field's values on the wire, and the dtype each sends its delta in.
DTYPES: dict[str, np.dtype] = {
    "f32": np.dtype("<f4"),
    "f16": np.dtype("<f2"),
    "q8": np.dtype("i1"),
    "topk": np.dtype("<f2"),
}
WIRE_NAMES = tuple(DTYPES)
USAGE = "f32, f16, q8 or topk:F with 0 < F <= 1"
UINT16_SPAN = 2**16  # a parameter of at most this many elements has uint16 indices
INDEX_DTYPES = (np.dtype("<u2"), np.dtype("<u4"))

Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class Encoding:
    """A parsed encoding setting: its wire name and, for ``topk``, the fraction kept."""

    name: str
    fraction: float = 1.0

    def __str__(self) -> str:
        return f"topk:{self.fraction:g}" if self.name == "topk" else self.name


def parse_encoding(text: str, where: str = "encoding") -> Encoding:
    """``"f32"``, ``"f16"``, ``"q8"`` or ``"topk:F"``; anything else is one ConfigError line."""
    name, sep, arg = str(text).partition(":")
    if name in ("f32", "f16", "q8") and not sep:
        return Encoding(name)
    if name == "topk" and sep:
        try:
            fraction = float(arg)
        except ValueError:
            fraction = math.nan
        if 0 < fraction <= 1:  # also refuses NaN and infinity
            return Encoding("topk", fraction)
        raise ConfigError(
            "bad_encoding", f"{where}: topk:F needs a number F with 0 < F <= 1, got {text!r}"
        )
    raise ConfigError("bad_encoding", f"{where} must be {USAGE}, got {text!r}")


def topk_count(fraction: float, n: int) -> int:
    """How many of ``n`` coordinates ``topk:fraction`` keeps: ⌈F·n⌉, at least 1, at most n."""
    # The epsilon keeps 0.1 x 320 = 32.000000000000004 at 32.
    return max(1, min(n, math.ceil(fraction * n - 1e-9))) if n else 0


def index_dtype(n: int) -> np.dtype:
    """The dtype of a topk index tensor for a parameter of ``n`` elements."""
    return INDEX_DTYPES[0] if n <= UINT16_SPAN else INDEX_DTYPES[1]


def select_topk(arr: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, values)``: the largest-magnitude coordinates, indices ascending.

    Ties go to the lower index (a stable sort), so a delta always encodes the same way.
    """
    flat = np.asarray(arr, np.float32).reshape(-1)
    k = topk_count(fraction, flat.size)
    keep = np.sort(np.argsort(-np.abs(flat), kind="stable")[:k])
    return keep.astype(index_dtype(flat.size)), flat[keep]


def encode(
    delta: Mapping[str, np.ndarray], encoding: Encoding
) -> tuple[Tensors, dict[str, float], Tensors]:
    """A float delta as ``(delta tensors, scales, indices)`` of an update in ``encoding``."""
    tensors: Tensors = {}
    scales: dict[str, float] = {}
    indices: Tensors = {}
    for name, arr in delta.items():
        arr = np.asarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise WireError("non_finite", f"delta {name} holds NaN or infinity")
        if encoding.name == "q8":
            tensors[name], scales[name] = quantize_q8(arr)
            continue
        if encoding.name == "topk":
            indices[name], arr = select_topk(arr, encoding.fraction)
        tensors[name] = arr.astype(DTYPES[encoding.name])
        if not np.isfinite(tensors[name]).all():
            raise WireError("non_finite", f"delta {name} overflows {encoding.name}")
    return tensors, scales, indices


def dense(
    name: str, delta: Tensors, scales: Mapping[str, float], indices: Tensors, shapes: Shapes | None
) -> Tensors:
    """The delta of an update in encoding ``name`` as float32 arrays of the model's shapes."""
    if name == "q8":
        return {n: dequantize_q8(a, scales[n]) for n, a in delta.items()}
    if name != "topk":
        # No copy for f32: the arrays stay read-only views of the payload (decode_tensor).
        return {n: a.astype(np.float32, copy=False) for n, a in delta.items()}
    if shapes is None:
        raise WireError("bad_shape", "a topk delta needs the model's shapes to be made dense")
    out: Tensors = {}
    for n, values in delta.items():
        flat = np.zeros(math.prod(shapes[n]), np.float32)
        flat[indices[n]] = values
        out[n] = flat.reshape(shapes[n])
    return out


def check(
    name: str, delta: Tensors, scales: Mapping[str, float], indices: Tensors, shapes: Shapes | None
) -> None:
    """Refuse a decoded update's tensors that break encoding ``name`` (docs/wire.md 3.1)."""
    want = DTYPES[name]
    for n, arr in delta.items():
        if arr.dtype != want:
            raise WireError("bad_dtype", f"delta {n} is {arr.dtype}, encoding {name} needs {want}")
    if name == "q8":
        if set(scales) != set(delta):
            raise WireError("bad_value", "q8 needs exactly one scale per delta tensor")
        for n, scale in scales.items():
            check_q8_scale(scale, f"scales.{n}")
    elif scales:
        raise WireError("bad_value", f"encoding {name} carries no scales")
    if name == "topk":
        check_topk(delta, indices, shapes)
    elif indices:
        raise WireError("bad_value", f"encoding {name} carries no indices")


def check_topk(values: Tensors, indices: Tensors, shapes: Shapes | None) -> None:
    """Values and indices pair up, per parameter, into a valid sparse tensor."""
    if list(indices) != list(values):
        raise WireError("bad_value", "topk needs one index tensor per delta tensor, same order")
    if shapes is not None and list(values) != list(shapes):
        raise WireError(
            "bad_shape", f"delta names {list(values)} do not match the model {list(shapes)}"
        )
    for n, idx in indices.items():
        size = None if shapes is None else math.prod(shapes[n])
        if values[n].ndim != 1 or idx.shape != values[n].shape:
            raise WireError("bad_shape", f"topk {n}: values and indices must be 1-D, one length")
        want = INDEX_DTYPES if size is None else (index_dtype(size),)
        if idx.dtype not in want:
            names = " or ".join(d.name for d in want)
            raise WireError("bad_dtype", f"topk indices {n} are {idx.dtype}, need {names}")
        if idx.size == 0 or (size is not None and idx.size > size):
            raise WireError("bad_shape", f"topk {n} sends {idx.size} coordinates of {size}")
        if idx.size > 1 and not (np.diff(idx.astype(np.int64)) > 0).all():
            raise WireError("bad_value", f"topk indices {n} are not strictly increasing")
        if size is not None and int(idx[-1]) >= size:
            raise WireError("bad_value", f"topk index {int(idx[-1])} of {n} is not below {size}")
