"""The wire vectors of docs/wire.md 3.7 and 3.8, which ``benchmarks.wire_vectors``
writes with the rest: feature statistics with and without names, and a global model
split into two chunks with the manifest retained after them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from fedmq.chunks import Chunk, Manifest, geometry, sha256
from fedmq.envelope import Message
from fedmq.featurestats import FeatureStats
from fedmq.wire import GlobalModel

Vectors = dict[str, tuple[str, Callable[[], Message]]]


def _stats(**named: Any) -> FeatureStats:
    sums = ([0.1, -3e4], [0.07, 3.1e8], [-0.2, -1.2e4], [0.3, -0.5])
    return FeatureStats("pi-07", 3, *sums, "c4" * 32, 1.5, **named)


def _chunk(model: GlobalModel, index: int) -> Chunk:
    payload = model.encode()
    step = geometry(len(payload), 2)
    data = payload[index * step : (index + 1) * step]
    return Chunk("global_model", sha256(payload), len(payload), 2, index, data)


def _manifest(model: GlobalModel) -> Manifest:
    payload = model.encode()
    return Manifest(model.run, model.version, sha256(payload), len(payload), 2)


def valid(model: Callable[[], GlobalModel]) -> Vectors:
    """``model``: the ``global_model`` vector's model, the one the chunks split."""
    return {
        "feature_stats": ("a device's feature statistics: float64 arrays", _stats),
        "feature_stats_named": (
            "feature statistics naming their features, in the arrays' order",
            lambda: _stats(features=["lux", "temp_c"]),
        ),
        "chunk_0": (
            "chunk 0 of 2 of the global_model vector's payload (its SHA-256 as digest)",
            lambda: _chunk(model(), 0),
        ),
        "chunk_1": (
            "chunk 1 of 2 of the same payload: the shorter last piece",
            lambda: _chunk(model(), 1),
        ),
        "model_manifest": (
            "the manifest retained on model/global after chunk_0 and chunk_1",
            lambda: _manifest(model()),
        ),
    }


def _changed(msg: Message, **changes: Any) -> bytes:
    body = msgpack.unpackb(msg.encode(), raw=False)  # tensors stay msgpack ext values
    return msgpack.packb({**body, **changes}, use_bin_type=True)


def invalid(model: GlobalModel) -> list[tuple[str, str, str, str, bytes]]:
    """(name, description, kind expected, reason, payload), one defect each."""
    first, manifest = _chunk(model, 0), _manifest(model)
    return [
        ("stats_names_short", "two features, one name", "feature_stats", "bad_shape",
         _changed(_stats(), features=["lux"])),
        ("stats_names_twice", "one name twice", "feature_stats", "bad_value",
         _changed(_stats(), features=["lux", "lux"])),
        ("chunk_index_past_count", "index 2 of 2 chunks", "chunk", "bad_value",
         _changed(first, index=2)),
        ("chunk_short", "size 2 larger, so chunk 0 is a byte short of ceil(size / count)",
         "chunk", "bad_value", _changed(first, size=first.size + 2)),
        ("chunk_other_kind", "a chunk of a device_status", "chunk", "bad_value",
         _changed(first, of="device_status")),
        ("manifest_one_chunk", "count 1: a model that fits is sent whole", "model_manifest",
         "bad_value", _changed(manifest, count=1)),
    ]  # fmt: skip
