"""Cross-language test vectors for wire format v1: payload bytes plus expected JSON.

    .venv/bin/python -m benchmarks.wire_vectors [--out docs/wire-vectors] [--check]

Writes ``NAME.bin`` (the payload) and ``NAME.json`` (what a decoder must make of it)
for every vector below; docs/wire-vectors/README.md says how to use them. Everything
is built from fixed, exactly representable numbers, so the bytes never change unless
the format does; ``--check`` exits 1 when the files on disk differ from a fresh build.
"""

from __future__ import annotations

import argparse
import dataclasses
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from benchmarks import vectors_stats_chunks as stats_chunks
from benchmarks.vector_json import dump, to_json
from fedmq.model import Arch
from fedmq.preprocess import Standardizer
from fedmq.schema import Schema
from fedmq.training import Hyper
from fedmq.wire import (
    AggregatorStatus,
    DeviceLedger,
    DeviceStatus,
    GlobalModel,
    HistorySummary,
    Message,
    Update,
    encode_tensor,
)

OUT = Path(__file__).resolve().parents[1] / "docs" / "wire-vectors"
ARCH = Arch("mlp", (3, 4, 2))
RUN = "0f1e2d3c4b5a6978"
HYPER = Hyper(lr=0.05, epochs=2, batch=16, mu=0.01, dp_clip=1.5, dp_noise=0.5)
SCHEMA = Schema(("temp_c", "lux", "rpm"), "activity", "classification", ("idle", "running"))


def _values(arch: Arch, step: int) -> dict[str, np.ndarray]:
    """Fixed float32 tensors: small rationals, some not exact in float16, one all zero."""
    out = {}
    for i, (name, shape) in enumerate(arch.param_shapes().items()):
        n = int(np.prod(shape))
        raw = [((k * step + 7 * i) % 41 - 20) / 3 for k in range(n)]
        out[name] = np.asarray(raw, np.float32).reshape(shape)
    out[f"b{len(arch.layers) - 2}"][...] = 0
    return out


def _update(encoding: str) -> Update:
    return Update.from_delta(
        {k: v / np.float32(64) for k, v in _values(ARCH, 5).items()},
        encoding=encoding,
        device="pi-07",
        seq=41,
        base_version=12,
        num_samples=250,
        steps=16,
        loss=0.6931471805599453,
        metrics={"train_seconds": 0.375},
        sent_at=1767225600.5,
    )


def _update_q8_float64_scales() -> Update:
    # Scales that float32 cannot hold: float32(q) x float32(scale) differs in the last
    # bit from float64(q) x scale rounded to float32 for some q (dense_delta shows it).
    q = np.arange(-128, 128, 9, dtype=np.int8)
    delta = {
        name: np.resize(q, shape).astype(np.int8) for name, shape in ARCH.param_shapes().items()
    }
    scales = {"w0": 0.1, "b0": 1 / 3, "w1": 2.0**-20 * 1.1, "b1": 123.456}
    fields = _update("f32").to_map()
    fields.update(encoding="q8", delta=delta, scales=scales)
    return Update(**fields)


def _model(arch: Arch = ARCH, hyper: Hyper = HYPER) -> GlobalModel:
    return GlobalModel.build(13, arch, _values(arch, 3), hyper, run=RUN, created_at=1767225601.25)


VALID: dict[str, tuple[str, Callable[[], Message]]] = {
    "update_f32": ("an f32 update", lambda: _update("f32")),
    "update_f16": ("an f16 update: values rounded to float16", lambda: _update("f16")),
    "update_q8": ("a q8 update, one all-zero tensor (scale 1.0)", lambda: _update("q8")),
    "update_q8_float64_scales": (
        "a q8 update whose scales are not float32 values; int8 -128 included",
        _update_q8_float64_scales,
    ),
    "update_topk": (
        "a topk:0.25 update: float16 values and uint16 indices; one all-zero tensor",
        lambda: _update("topk:0.25"),
    ),
    "global_model": ("an MLP global model, hyper with noise", _model),
    "global_model_rollback": (
        "a global model after one announced rollback (optional rollbacks = 1)",
        lambda: dataclasses.replace(_model(), rollbacks=1),
    ),
    "global_model_linear": (
        "a linear global model, hyper without noise",
        lambda: _model(Arch("linear", (3, 1)), Hyper()),
    ),
    "global_model_schema": (
        "an MLP global model whose arch carries the fleet's schema (digest version 2)",
        lambda: _model(Arch("mlp", (3, 4, 2), schema=SCHEMA)),
    ),
    "device_status": (
        "a device status",
        lambda: DeviceStatus(
            "pi-07", "training", "0.4.0", 12, 1000, 41, 0.5, 37.5, 48_000_000, 1.5
        ),
    ),
    "device_status_nils": (
        "a device status with every optional field nil (a last will)",
        lambda: DeviceStatus("pi-07", "offline", "0.4.0", -1, 0, -1, None, None, None, 0.0),
    ),
    "aggregator_status": (
        "an aggregator status; params of every scalar type",
        lambda: AggregatorStatus(
            "serving",
            "fedbuff",
            {"k": 4, "eta": 1.0, "trim": None, "durable": True, "x": "y"},
            13,
            250,
            {"old_seq": 3, "bad_device_id": 1},
            0.875,
            0.25,
            1767225000.0,
            1767225601.0,
        ),
    ),
    "aggregator_status_offline": (
        "an offline aggregator status with the optional run, reason and message",
        lambda: AggregatorStatus(
            "offline",
            "fedasync",
            {},
            7,
            30,
            {},
            None,
            None,
            1767225000.0,
            1767225601.0,
            run=RUN,
            reason="disk_full",
            message="cannot write the ledger: disk full",
        ),
    ),
    "global_model_prep": (
        "an MLP global model carrying prep (mean, scale): the prep digest",
        lambda: GlobalModel.build(
            14,
            ARCH,
            _values(ARCH, 3),
            HYPER,
            run=RUN,
            created_at=1767225602.5,
            prep=Standardizer(np.arange(ARCH.n_inputs) - 1.5, np.arange(ARCH.n_inputs) + 0.25),
        ),
    ),
    "device_ledger": (
        "a device ledger",
        lambda: DeviceLedger(
            "pi-07", 40, {"too_stale": 2}, 41, 1, 10_000, 1767220000.0, 1767225600.5
        ),
    ),
    "history": (
        "an aggregator history summary: three versions, the first not evaluated",
        lambda: HistorySummary(
            RUN,
            [0, 1, 3],
            [1767225000.0, 1767225000.5, 1767225001.25],
            [None, 0.5, 0.875],
            [None, 1.5, 0.25],
            [0, 10, 31],
            1767225002.0,
        ),
    ),
}


VALID.update(stats_chunks.valid(_model))


# -- invalid payloads: one defect each -----------------------------------------------


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True, default=encode_tensor)


class _Raw(bytes):
    """A value already in msgpack form."""


def _pairs(pairs: list[tuple[str, Any]]) -> _Raw:
    """A map written pair by pair, so that it can hold a key twice."""
    n = len(pairs)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
    body = b"".join(_pack(k) + (v if isinstance(v, _Raw) else _pack(v)) for k, v in pairs)
    return _Raw(head + body)


def _with(body: dict[str, Any], key: str, raw: _Raw) -> _Raw:
    """``body`` with the value of ``key`` replaced by raw msgpack, in place."""
    return _pairs([(k, raw if k == key else v) for k, v in body.items()])


def _body(msg: Message, **changes: Any) -> dict[str, Any]:
    body = {"v": 1, "kind": msg.KIND, **msg.to_map(), **changes}
    return {k: v for k, v in body.items() if v is not _DROP}


_DROP = object()


def _tensor(code: int, shape: tuple[int, ...], data: bytes) -> msgpack.ExtType:
    return msgpack.ExtType(1, struct.pack(f"<BB{len(shape)}I", code, len(shape), *shape) + data)


def _invalid() -> dict[str, tuple[str, str, str, bytes]]:
    """name -> (description, kind expected, reason, payload)."""
    u, q, m = _update("f32"), _update("q8"), _model()
    ub, qb, mb = _body(u), _body(q), _body(m)
    delta = dict(u.delta)
    f16 = {k: v.astype(np.float16) for k, v in delta.items()}
    tanh = {**ARCH.to_dict(), "activation": "tanh"}
    cases = [
        ("dup_top_key", "seq twice at the top", "update", "duplicate_key",
         _pairs([*ub.items(), ("seq", 42)])),
        ("dup_nested_key", "w0 twice inside delta", "update", "duplicate_key",
         _with(ub, "delta", _pairs([*delta.items(), ("w0", delta["w0"])]))),
        ("v_true", "v is true", "update", "bad_version", _pack(_body(u, v=True))),
        ("v_float", "v is the float 1.0", "update", "bad_version", _pack(_body(u, v=1.0))),
        ("v_missing", "no v", "update", "bad_version", _pack(_body(u, v=_DROP))),
        ("wrong_kind", "a global model where an update is expected", "update", "bad_kind",
         m.encode()),
        ("unknown_field", "an extra top-level key", "update", "unknown_field",
         _pack({**ub, "extra": 1})),
        ("missing_field", "no seq", "update", "missing_field", _pack(_body(u, seq=_DROP))),
        ("seq_float", "seq is the float 41.0", "update", "bad_type", _pack(_body(u, seq=41.0))),
        ("num_samples_bool", "num_samples is true", "update", "bad_type",
         _pack(_body(u, num_samples=True))),
        ("device_empty", "device is empty", "update", "bad_device_id", _pack(_body(u, device=""))),
        ("device_slash", "device holds a /", "update", "bad_device_id",
         _pack(_body(u, device="pi/07"))),
        ("device_plus", "device holds a +", "update", "bad_device_id",
         _pack(_body(u, device="pi+07"))),
        ("device_hash", "device holds a #", "update", "bad_device_id",
         _pack(_body(u, device="pi#07"))),
        ("device_nul", "device holds a NUL", "update", "bad_device_id",
         _pack(_body(u, device="pi\0"))),
        ("trailing_bytes", "one byte after the map", "update", "malformed", u.encode() + b"\0"),
        ("bin_value", "an empty bin as a metric", "update", "malformed",
         _with(ub, "metrics", _pairs([("x", b"")]))),
        ("tensor_short", "w0 carries one byte too few", "update", "bad_tensor",
         _pack(_body(u, delta={**delta, "w0": _tensor(1, (3, 4), bytes(47))}))),
        ("ext_code_7", "w0 is ext type 7", "update", "bad_ext",
         _pack(_body(u, delta={**delta, "w0": msgpack.ExtType(7, b"\1\0")}))),
        ("f16_in_f32", "float16 tensors in an f32 update", "update", "bad_dtype",
         _pack(_body(u, delta=f16))),
        ("shape_transposed", "w0 transposed", "update", "bad_shape",
         _pack(_body(u, delta={**delta, "w0": np.ascontiguousarray(delta["w0"].T)}))),
        ("nan", "a NaN in b0", "update", "non_finite",
         _pack(_body(u, delta={**delta, "b0": np.array([0, np.nan, 0, 0], np.float32)}))),
        ("q8_scale_zero", "a q8 scale of 0", "update", "bad_value",
         _pack({**qb, "scales": {**q.scales, "w0": 0.0}})),
        ("q8_scale_missing", "no scale for w1", "update", "bad_value",
         _pack({**qb, "scales": {k: s for k, s in q.scales.items() if k != "w1"}})),
        ("run_upper", "run in upper case", "global_model", "bad_value",
         _pack(_body(m, run=RUN.upper()))),
        ("digest_wrong", "a digest of zeros", "global_model", "bad_digest",
         _pack(_body(m, digest="0" * 64))),
        ("digest_other_arch", "same weights, the arch says tanh", "global_model", "bad_digest",
         _pack({**mb, "arch": tanh})),
    ]  # fmt: skip
    cases += _invalid_schema(m) + _invalid_topk() + stats_chunks.invalid(m)
    return {name: (desc, kind, reason, data) for name, desc, kind, reason, data in cases}


def _invalid_schema(m: GlobalModel) -> list[tuple[str, str, str, str, Any]]:
    """Defects of ``arch.schema``; ``m`` is the same model without a schema."""
    ms = _model(Arch("mlp", (3, 4, 2), schema=SCHEMA))
    msb = _body(ms)
    renamed = {**ms.arch.to_dict(), "schema": {**msb["arch"]["schema"], "label": "state"}}
    three = {**ms.arch.to_dict(), "schema": {**msb["arch"]["schema"], "classes": ["a", "b", "c"]}}
    return [
        ("digest_other_label", "a schema-carrying arch, the label renamed", "global_model",
         "bad_digest", _pack({**msb, "arch": renamed})),
        ("schema_three_classes", "a schema with 3 classes for a 2-output model",
         "global_model", "bad_value", _pack({**msb, "arch": three})),
        ("schema_no_digest_v1", "a schema arch with the v1 digest of the same model",
         "global_model", "bad_digest", _pack({**msb, "digest": m.digest})),
    ]  # fmt: skip


def _invalid_topk() -> list[tuple[str, str, str, str, Any]]:
    """Defects of a topk update's sparse tensors (docs/wire.md 3.1)."""
    t = _update("topk:0.25")
    tb, idx = _body(t), dict(t.indices)

    def indices(**changes: Any) -> bytes:
        return _pack({**tb, "indices": {**idx, **changes}})

    return [
        ("topk_unsorted", "the w0 indices in decreasing order", "update", "bad_value",
         indices(w0=idx["w0"][::-1].copy())),
        ("topk_repeated", "an index of w0 twice", "update", "bad_value",
         indices(w0=np.array([1, 1, 2], np.uint16))),
        ("topk_index_range", "index 12 in the 12 elements of w0", "update", "bad_value",
         indices(w0=np.array([0, 5, 12], np.uint16))),
        ("topk_uint32", "uint32 indices for w0, which has at most 2^16 elements",
         "update", "bad_dtype", indices(w0=idx["w0"].astype(np.uint32))),
        ("topk_count", "one index more than b0 has values", "update", "bad_shape",
         indices(b0=np.array([0, 3], np.uint16))),
        ("topk_too_many", "13 coordinates of the 12 of w0", "update", "bad_shape",
         _pack({**tb, "delta": {**t.delta, "w0": np.zeros(13, np.float16)},
                "indices": {**idx, "w0": np.arange(13, dtype=np.uint16)}})),
        ("topk_no_indices", "a topk update without indices", "update", "bad_value",
         _pack(_body(t, indices=_DROP))),
        ("topk_nan", "a NaN among the w1 values", "update", "non_finite",
         _pack({**tb, "delta": {**t.delta, "w1": np.array([np.nan, 1], np.float16)}})),
        ("indices_in_f32", "indices in an f32 update", "update", "bad_value",
         _pack({**_body(_update("f32")), "indices": idx})),
    ]  # fmt: skip


# -- expected JSON -------------------------------------------------------------------


def expected(msg: Message, description: str) -> dict[str, Any]:
    """What a decoder must produce for a valid vector."""
    out: dict[str, Any] = {"description": description, "decode_as": msg.KIND, "valid": True}
    if isinstance(msg, Update):
        out["receiver_arch"] = ARCH.to_dict()
    out["message"] = to_json(msg)
    if isinstance(msg, Update):
        out["dense_delta"] = to_json(msg.dense_delta())
    return out


def build() -> dict[str, bytes]:
    """Every file of the vector directory except README.md: name -> bytes."""
    files: dict[str, bytes] = {}
    for name, (description, make) in VALID.items():
        msg = make()
        files[f"{name}.bin"] = msg.encode()
        files[f"{name}.json"] = dump(expected(msg, description))
    for name, (description, kind, reason, data) in _invalid().items():
        spec: dict[str, Any] = {"description": description, "decode_as": kind, "valid": False}
        if kind == "update":
            spec["receiver_arch"] = ARCH.to_dict()
        spec["reason"] = reason
        files[f"invalid_{name}.bin"] = bytes(data)
        files[f"invalid_{name}.json"] = dump(spec)
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    args = p.parse_args(argv)
    files = build()
    if args.check:
        stale = sorted(n for n, data in files.items() if _read(args.out / n) != data)
        extra = sorted(
            f.name for f in args.out.glob("*") if f.name not in files and f.name != "README.md"
        )
        for name in stale + extra:
            print(f"{args.out / name}: stale; run python -m benchmarks.wire_vectors")
        return 1 if stale or extra else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (args.out / name).write_bytes(data)
    print(f"wrote {len(files)} files to {args.out}")
    return 0


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


if __name__ == "__main__":
    sys.exit(main())
