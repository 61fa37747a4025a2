"""Tensors on the wire: msgpack ext type 1, q8 quantisation and the model digest.

An ext-1 value holds: dtype code (u8), ndim (u8), shape (ndim x u32 LE), raw LE data
in C order. ``docs/wire.md`` sections 2, 3.1 and 3.2 specify these bytes; this module
and ``fedmq.wire`` (the messages) are their only implementation.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING

import msgpack
import numpy as np

from fedmq.errors import WireError
from fedmq.model import Arch

if TYPE_CHECKING:
    from fedmq.preprocess import Standardizer

TENSOR_EXT = 1
MAX_NDIM = 8

DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f2"),
    3: np.dtype("i1"),
    4: np.dtype("u1"),
    5: np.dtype("<i4"),
    6: np.dtype("<u2"),  # topk indices (docs/wire.md 3.1)
    7: np.dtype("<u4"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in DTYPES.items()}
DIGEST_PREFIX = b"fedmq-digest-v1\0"
DIGEST_PREFIX_V2 = b"fedmq-digest-v2\0"
PREP_DIGEST_PREFIX = b"fedmq-digest-prep-v1\0"
# float32(scale) x 128 must stay finite, so that no int8 value dequantises to infinity.
MAX_SCALE = float(np.finfo(np.float32).max) / 128

Tensors = dict[str, np.ndarray]


def tensor_bytes(arr: np.ndarray) -> bytes:
    """The ext-1 data of one array: header, then little-endian C-order elements."""
    arr = np.asarray(arr)
    code = _CODES.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise WireError("bad_dtype", f"dtype {arr.dtype} cannot go on the wire")
    if arr.ndim > MAX_NDIM:
        raise WireError("bad_tensor", f"at most {MAX_NDIM} dimensions, got {arr.ndim}")
    if any(n >= 2**32 for n in arr.shape):
        raise WireError("bad_tensor", f"shape {arr.shape} does not fit uint32")
    header = struct.pack(f"<BB{arr.ndim}I", code, arr.ndim, *arr.shape)
    return header + np.ascontiguousarray(arr, dtype=DTYPES[code]).tobytes()


def encode_tensor(arr: np.ndarray) -> msgpack.ExtType:
    """Pack one array as ext type 1."""
    return msgpack.ExtType(TENSOR_EXT, tensor_bytes(arr))


def decode_tensor(ext: object, where: str) -> np.ndarray:
    """Unpack ext type 1 without copying the data (the result is read-only)."""
    if isinstance(ext, msgpack.Timestamp):  # msgpack decodes ext type -1 itself
        raise WireError("bad_ext", f"{where}: ext type -1, expected {TENSOR_EXT}")
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


def quantize_q8(arr: np.ndarray) -> tuple[np.ndarray, float]:
    """Symmetric per-tensor int8: ``(q, scale)`` with ``scale`` a float32 value.

    ``scale = float32(max|x| / 127)`` (1.0 for an all-zero tensor; the smallest
    positive float32 if that rounds to 0), ``q = clip(rint(x / scale), -127, 127)``.
    """
    arr = np.asarray(arr, dtype=np.float32)
    peak = float(np.abs(arr).max(initial=0.0))
    if peak == 0:
        return np.zeros(arr.shape, np.int8), 1.0
    scale = np.float32(peak / 127.0)
    if scale == 0:  # peak is subnormal in float32
        scale = np.float32(np.finfo(np.float32).smallest_subnormal)
    q = np.rint(arr.astype(np.float64) / np.float64(scale))
    return np.clip(q, -127, 127).astype(np.int8), float(scale)


def dequantize_q8(q: np.ndarray, scale: float) -> np.ndarray:
    """float32(q) x float32(scale), one IEEE float32 multiplication per element."""
    return np.asarray(q).astype(np.float32) * np.float32(scale)


def check_q8_scale(scale: float, where: str) -> None:
    """A scale must be positive and finite in float32, and keep ``128 x scale`` finite."""
    # MAX_SCALE is a float32 value, so scale <= MAX_SCALE implies float32(scale) <= it.
    if not 0 < scale <= MAX_SCALE or np.float32(scale) == 0:
        raise WireError(
            "bad_value", f"{where}={scale!r}: float32(scale) must be in (0, {MAX_SCALE:.6g}]"
        )


def weights_digest(arch: Arch, weights: Mapping[str, np.ndarray]) -> str:
    """The model digest (docs/wire.md 3.2): SHA-256 over arch, names and tensor bytes.

    The tensors are taken in ``arch.param_shapes()`` order and hashed as they are
    (dtype included): pass float32 weights to get the digest of a ``GlobalModel``.
    """

    def text(s: str) -> bytes:
        raw = s.encode("utf-8")
        return struct.pack("<I", len(raw)) + raw

    # A schema in the arch is digest version 2 (docs/wire.md 3.2); without one, version 1.
    h = hashlib.sha256(DIGEST_PREFIX if arch.schema is None else DIGEST_PREFIX_V2)
    h.update(text(arch.kind) + text(arch.activation))
    h.update(struct.pack(f"<I{len(arch.layers)}I", len(arch.layers), *arch.layers))
    if arch.schema is not None:
        sc = arch.schema
        classes = sc.classes or ()
        h.update(b"S" + text(sc.task) + text(sc.label))
        h.update(struct.pack("<I", len(sc.features)) + b"".join(map(text, sc.features)))
        h.update(struct.pack("<I", len(classes)) + b"".join(map(text, classes)))
    names = list(arch.param_shapes())
    h.update(struct.pack("<I", len(names)))
    for name in names:
        h.update(text(name))
        h.update(tensor_bytes(weights[name]))
    return h.hexdigest()


def model_digest(arch: Arch, weights: Mapping[str, np.ndarray], prep: Standardizer | None) -> str:
    """The model digest; with ``prep``, SHA-256 of the version-1 digest, mean and scale."""
    digest = weights_digest(arch, weights)
    if prep is None:
        return digest
    h = hashlib.sha256(PREP_DIGEST_PREFIX + bytes.fromhex(digest))
    h.update(tensor_bytes(prep.mean) + tensor_bytes(prep.scale))
    return h.hexdigest()
