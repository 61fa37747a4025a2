"""The envelope every fedmq message shares: ``{"v": 1, "kind": ...}`` and its fields.

``Message`` holds encode/decode; each message (``fedmq.wire``, ``fedmq.featurestats``)
lists its fields and their checks. Split from ``fedmq.wire`` so that messages can live
in modules of their own.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import msgpack
import numpy as np

from fedmq.errors import WireError
from fedmq.fields import Check, parse_msgpack
from fedmq.tensors import encode_tensor

VERSION = 1
MAX_BYTES = 8 * 1024 * 1024

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
        return cls._from_body(_unpack(data, max_bytes), **context)

    @classmethod
    def _from_body(cls: type[M], body: dict[str, Any], **context: Any) -> M:
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


def _unpack(data: bytes, max_bytes: int) -> dict[str, Any]:
    """Parse the envelope: size, msgpack, a map, ``v`` as a strict int 1."""
    body = parse_msgpack(data, max_bytes)
    if not isinstance(body, dict):
        raise WireError("not_a_map", "a payload must be a msgpack map")
    v = body.get("v")
    if type(v) is not int or v != VERSION:  # not True, not 1.0
        raise WireError("bad_version", f"wire version {v!r}, expected the int {VERSION}")
    return body
