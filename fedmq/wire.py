"""Wire format v1: every payload fedmq puts on MQTT, except the raw ONNX bytes.

A payload is one msgpack map with ``"v": 1`` and a ``"kind"``; tensors are msgpack ext
type 1. The byte-level specification is ``docs/wire.md``; its only implementation is
this module (the messages), ``fedmq.envelope`` (what every message shares),
``fedmq.fields`` (parsing and the per-field checks), ``fedmq.encodings`` (how an
update's delta is encoded: f32, f16, q8, topk) and ``fedmq.tensors`` (tensor bytes,
q8, the model digest).

Decoding is defensive because the bytes come from the network: the size limit is
checked before parsing, msgpack's own length limits stop size bombs, duplicate keys
and bin are refused while parsing, every field is type- and range-checked, and any
failure is a ``WireError`` with a reason listed in docs/wire.md section 5.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from fedmq import encodings
from fedmq.envelope import MAX_BYTES, VERSION, Message, unpack
from fedmq.errors import ConfigError, WireError
from fedmq.featurestats import FeatureStats
from fedmq.fields import (
    Check,
    as_arch,
    as_device,
    as_float,
    as_hex,
    as_hyper,
    as_int,
    as_map,
    as_prep,
    as_scalar,
    as_str,
    as_tensors,
    as_time,
    check_against,
    check_finite,
    optional,
)
from fedmq.history import HistorySummary
from fedmq.model import Arch
from fedmq.preprocess import Standardizer
from fedmq.tensors import Tensors, model_digest, weights_digest
from fedmq.tensors import (
    encode_tensor as encode_tensor,  # re-exported: tests and tools encode with it
)
from fedmq.training import Hyper

__all__ = [
    "MAX_BYTES",
    "MESSAGES",
    "VERSION",
    "AggregatorStatus",
    "DeviceLedger",
    "DeviceStatus",
    "FeatureStats",
    "GlobalModel",
    "HistorySummary",
    "Message",
    "Update",
    "decode_any",
    "encode_tensor",
    "new_run",
    "weights_digest",
]

RUN_HEX = 16
MAX_STATUS_MESSAGE = 256

DEVICE_STATES = ("online", "training", "idle", "offline", "error")
AGGREGATOR_STATES = ("starting", "serving", "stopping", "offline")


def new_run() -> str:
    """A fresh random run id (``RUN_HEX`` lowercase hex digits) for a new federation."""
    return secrets.token_hex(RUN_HEX // 2)


@dataclass
class Update(Message):
    """A device's delta (local − base) trained from global version ``base_version``.

    ``delta`` holds the tensors as sent in ``encoding`` (``fedmq.encodings``: float32,
    float16, int8 with one scale per tensor in ``scales``, or topk's float16 values with
    their ``indices``); ``dense_delta()`` gives float32 arrays of the model's shapes.
    ``shapes`` is not sent: it is what the delta was encoded from or checked against.
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
    indices: Tensors = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] | None = field(default=None, repr=False, compare=False)

    KIND: ClassVar[str] = "update"
    FIELDS: ClassVar[dict[str, Check]] = {
        "device": as_device,
        "seq": as_int(0, 2**63 - 1),
        "base_version": as_int(0, 2**63 - 1),
        "num_samples": as_int(1, 2**31 - 1),
        "steps": as_int(0, 2**31 - 1),
        "loss": optional(as_float()),
        "encoding": as_str(encodings.WIRE_NAMES),
        "delta": as_tensors,
        "metrics": as_map(as_float(), max_items=64),
        "sent_at": as_time,
        "scales": as_map(as_float(lo=0.0)),
        "indices": as_tensors,
    }
    OPTIONAL: ClassVar[Mapping[str, Any]] = {"indices": {}}

    @classmethod
    def from_delta(cls, delta: Mapping[str, np.ndarray], *, encoding: str = "f32", **fields: Any):
        """Encode a float delta as ``encoding``: f32, f16, q8 or topk:F (fedmq.encodings)."""
        try:
            how = encodings.parse_encoding(encoding)
        except ConfigError as exc:
            raise WireError("bad_value", exc.message) from exc
        tensors, scales, indices = encodings.encode(delta, how)
        shapes = {name: np.shape(arr) for name, arr in delta.items()}
        return cls(
            encoding=how.name,
            delta=tensors,
            scales=scales,
            indices=indices,
            shapes=shapes,
            **fields,
        )

    def dense_delta(self) -> Tensors:
        """The delta as float32 arrays (q8: float32(q) x float32(scale), docs/wire.md 3.1)."""
        return encodings.dense(self.encoding, self.delta, self.scales, self.indices, self.shapes)

    @classmethod
    def _build(
        cls, values: dict[str, Any], shapes: Mapping[str, tuple[int, ...]] | None = None
    ) -> Update:
        update = cls(**values, shapes=None if shapes is None else dict(shapes))
        encodings.check(update.encoding, update.delta, update.scales, update.indices, shapes)
        if shapes is not None and update.encoding != "topk":  # topk checks its own
            check_against(update.delta, shapes, "delta")
        check_finite(update.delta, "delta")
        return update


@dataclass
class GlobalModel(Message):
    """The global model at ``version`` of federation ``run``.

    ``digest`` is ``weights_digest(arch, weights)``: it covers the arch, the parameter
    names, shapes, dtypes and data (docs/wire.md 3.2). ``rollbacks`` counts the
    rollbacks the aggregator announced in this run: devices order models of one run by
    (rollbacks, version), so a rolled-back ledger's lower version still reaches them.
    """

    run: str
    version: int
    arch: Arch
    weights: Tensors
    digest: str
    hyper: Hyper
    created_at: float
    rollbacks: int = 0
    prep: Standardizer | None = None

    KIND: ClassVar[str] = "global_model"
    FIELDS: ClassVar[dict[str, Check]] = {
        "run": as_hex(RUN_HEX),
        "version": as_int(0, 2**63 - 1),
        "arch": as_arch,
        "weights": as_tensors,
        "digest": as_hex(64),
        "hyper": as_hyper,
        "created_at": as_time,
        "rollbacks": as_int(0, 2**31 - 1),
        "prep": as_prep,
    }
    OPTIONAL: ClassVar[Mapping[str, Any]] = {"rollbacks": 0, "prep": None}

    @classmethod
    def build(
        cls,
        version: int,
        arch: Arch,
        weights: Mapping[str, np.ndarray],
        hyper: Hyper,
        *,
        run: str,
        created_at: float = 0.0,
        rollbacks: int = 0,
        prep: Standardizer | None = None,
    ) -> GlobalModel:
        run = as_hex(RUN_HEX)(run, "run")
        ordered = {
            name: np.asarray(weights[name], dtype=np.float32) for name in arch.param_shapes()
        }
        check_against(ordered, arch.param_shapes(), "weights")
        check_finite(ordered, "weights")
        if prep is not None and prep.mean.size != arch.n_inputs:
            raise WireError(
                "bad_shape", f"prep has {prep.mean.size} features, arch {arch.n_inputs}"
            )
        digest = model_digest(arch, ordered, prep)
        return cls(
            run, version, arch, ordered, digest, hyper, created_at, rollbacks=rollbacks, prep=prep
        )

    def to_map(self) -> dict[str, Any]:
        out = super().to_map()
        out["arch"] = self.arch.to_dict()
        out["hyper"] = self.hyper.to_dict()  # ``noise`` only when not 0
        if self.prep is not None:
            out["prep"] = {"mean": self.prep.mean, "scale": self.prep.scale}
        return out

    @classmethod
    def _build(cls, values: dict[str, Any]) -> GlobalModel:
        model = cls(**values)
        for name, arr in model.weights.items():
            if arr.dtype != np.float32:
                raise WireError("bad_dtype", f"weights {name} is {arr.dtype}, must be float32")
        check_against(model.weights, model.arch.param_shapes(), "weights")
        check_finite(model.weights, "weights")
        if model.prep is not None and model.prep.mean.size != model.arch.n_inputs:
            raise WireError("bad_shape", "prep must have one mean and scale per input feature")
        if model_digest(model.arch, model.weights, model.prep) != model.digest:
            raise WireError("bad_digest", "the arch and weights do not match their digest")
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
        "device": as_device,
        "state": as_str(DEVICE_STATES),
        "agent_version": as_str(max_len=64),
        "model_version": as_int(-1, 2**63 - 1),
        "samples": as_int(0, 2**63 - 1),
        "last_seq": as_int(-1, 2**63 - 1),
        "last_loss": optional(as_float()),
        "cpu": optional(as_float(lo=0.0)),
        "rss": optional(as_int(0, 2**63 - 1)),
        "at": as_time,
        "reason": optional(as_str(max_len=64)),
        "message": optional(as_str(max_len=MAX_STATUS_MESSAGE)),
    }
    OPTIONAL: ClassVar[Mapping[str, Any]] = {"reason": None, "message": None}


@dataclass
class AggregatorStatus(Message):
    """The aggregator's retained status; its last will carries ``state="offline"``.

    ``run`` is the federation it serves; an ``offline`` status after a failure (a full
    disk, a refused start) carries a ``reason`` code and one line ``message``.
    """

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
    run: str | None = None
    reason: str | None = None
    message: str | None = None
    epsilon: float | None = None  # fleet's DP ε (the largest device's); absent without DP
    devices: dict[str, int] | None = None  # devices per state, from their retained statuses

    KIND: ClassVar[str] = "aggregator_status"
    FIELDS: ClassVar[dict[str, Check]] = {
        "state": as_str(AGGREGATOR_STATES),
        "strategy": as_str(max_len=64),
        "params": as_map(as_scalar, max_items=64),
        "version": as_int(0, 2**63 - 1),
        "accepted": as_int(0, 2**63 - 1),
        "rejected": as_map(as_int(0, 2**63 - 1)),
        "last_accuracy": optional(as_float()),
        "last_loss": optional(as_float()),
        "started_at": as_time,
        "at": as_time,
        "run": optional(as_hex(RUN_HEX)),
        "reason": optional(as_str(max_len=64)),
        "message": optional(as_str(max_len=MAX_STATUS_MESSAGE)),
        "epsilon": optional(as_float(lo=0.0)),
        # Any state name: a later fedmq may add states, and older readers must still read it.
        "devices": optional(as_map(as_int(0, 2**63 - 1), max_items=16)),
    }
    OPTIONAL: ClassVar[Mapping[str, Any]] = {
        "run": None,
        "reason": None,
        "message": None,
        "epsilon": None,
        "devices": None,
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
    epsilon: float | None = None  # DP ε this device has spent; absent without DP

    KIND: ClassVar[str] = "device_ledger"
    FIELDS: ClassVar[dict[str, Check]] = {
        "device": as_device,
        "accepted": as_int(0, 2**63 - 1),
        "rejected": as_map(as_int(0, 2**63 - 1)),
        "last_seq": as_int(-1, 2**63 - 1),
        "last_staleness": optional(as_int(0, 2**63 - 1)),
        "samples": as_int(0, 2**63 - 1),
        "first_seen": as_time,
        "last_seen": as_time,
        "epsilon": optional(as_float(lo=0.0)),
    }
    OPTIONAL: ClassVar[Mapping[str, Any]] = {"epsilon": None}


MESSAGES: dict[str, type[Message]] = {
    m.KIND: m
    for m in (
        Update,
        GlobalModel,
        DeviceStatus,
        AggregatorStatus,
        DeviceLedger,
        HistorySummary,
        FeatureStats,
    )
}


def decode_any(data: bytes, *, max_bytes: int = MAX_BYTES) -> Message:
    """Decode a payload of any kind (for inspection tools)."""
    body = unpack(data, max_bytes)
    kind = body.get("kind")
    cls = MESSAGES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError("bad_kind", f"unknown kind {kind!r}")
    return cls._from_body(body)
