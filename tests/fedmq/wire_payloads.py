"""Payload builders for the wire tests: valid maps to change one thing in, raw pairs."""

from __future__ import annotations

import struct

import msgpack

from fedmq.model import Arch, init_weights
from fedmq.training import Hyper
from fedmq.wire import GlobalModel, Update, encode_tensor

ARCH = Arch("mlp", (4, 3, 2))
SHAPES = ARCH.param_shapes()
RUN = "00112233aabbccdd"


def update_map(**changes) -> dict:
    w = init_weights(ARCH, 0)
    u = Update.from_delta(
        w, device="d1", seq=1, base_version=0, num_samples=4, steps=1, loss=0.1, sent_at=1.0
    )
    body = {"v": 1, "kind": "update", **u.to_map()}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not DROP}


DROP = object()  # a key to leave out


def pack(body: dict) -> bytes:
    return msgpack.packb(body, use_bin_type=True, default=lambda a: encode_tensor(a))


def tensor_ext(code: int, shape: tuple[int, ...], data: bytes) -> msgpack.ExtType:
    return msgpack.ExtType(1, struct.pack(f"<BB{len(shape)}I", code, len(shape), *shape) + data)


def model_map(**changes) -> dict:
    model = GlobalModel.build(1, ARCH, init_weights(ARCH, 0), Hyper(), run=RUN)
    body = {"v": 1, "kind": "global_model", **model.to_map(), **changes}
    return {k: v for k, v in body.items() if v is not DROP}


def pack_pairs(pairs: list[tuple[object, object]]) -> bytes:
    """A msgpack map written pair by pair, so that it can hold a key twice."""
    head = (
        bytes([0x80 | len(pairs)]) if len(pairs) < 16 else b"\xde" + struct.pack(">H", len(pairs))
    )
    return head + b"".join(pack(k) + pack(v) for k, v in pairs)


def dup(body: dict, key: str, value: object) -> bytes:
    return pack_pairs([*body.items(), (key, value)])


W = init_weights(ARCH, 0)
HYPER = {"lr": 0.1, "epochs": 1, "batch": 8, "mu": 0.0, "clip": 0.0}


def q8_map(**scales: float) -> dict:
    u = Update.from_delta(W, encoding="q8", device="d1", seq=1, base_version=0,
                          num_samples=4, steps=1, loss=0.1)  # fmt: skip
    return {"v": 1, "kind": "update", **u.to_map(), "scales": {**u.scales, **scales}}
