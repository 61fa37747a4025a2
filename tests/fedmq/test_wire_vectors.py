"""docs/wire-vectors: every vector decodes as its JSON says, and regenerating changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.wire_vectors import OUT, build, main, to_json
from fedmq.chunks import KINDS
from fedmq.encodings import WIRE_NAMES
from fedmq.errors import WireError
from fedmq.model import Arch
from fedmq.wire import MESSAGES

KNOWN = {**MESSAGES, **KINDS}  # the messages and 3.8's chunk and manifest

NAMES = sorted(p.stem for p in OUT.glob("*.json"))


def _load(name: str) -> tuple[dict, bytes]:
    spec = json.loads((OUT / f"{name}.json").read_text(encoding="utf-8"))
    return spec, (OUT / f"{name}.bin").read_bytes()


def _decode(spec: dict, data: bytes):
    cls = KNOWN[spec["decode_as"]]
    if "receiver_arch" in spec:
        return cls.decode(data, shapes=Arch(**spec["receiver_arch"]).param_shapes())
    return cls.decode(data)


@pytest.mark.parametrize("name", NAMES)
def test_each_vector_decodes_as_its_json_says(name: str) -> None:
    spec, data = _load(name)
    if not spec["valid"]:
        with pytest.raises(WireError) as err:
            _decode(spec, data)
        assert err.value.reason == spec["reason"], err.value
        return
    msg = _decode(spec, data)
    assert to_json(msg) == spec["message"]
    if "dense_delta" in spec:
        assert to_json(msg.dense_delta()) == spec["dense_delta"]
    assert msg.encode() == data  # the encoder writes these bytes and no others


def test_regenerating_gives_the_same_bytes() -> None:
    on_disk = {p.name: p.read_bytes() for p in OUT.iterdir() if p.name != "README.md"}
    assert build() == on_disk


def test_the_vectors_cover_every_kind_encoding_and_the_new_rules() -> None:
    specs = [_load(name)[0] for name in NAMES]
    valid = [s["message"] for s in specs if s["valid"]]
    assert {m["kind"] for m in valid} == set(KNOWN)
    assert {m["encoding"] for m in valid if m["kind"] == "update"} == set(WIRE_NAMES)
    reasons = {s["reason"] for s in specs if not s["valid"]}
    assert {"duplicate_key", "bad_version", "bad_device_id", "bad_digest", "bad_type"} <= reasons
    # Every vector's description names its case; README.md lists how to use them.
    assert all(s["description"] for s in specs)
    assert (
        (OUT / "README.md").read_text(encoding="utf-8").count("python -m benchmarks.wire_vectors")
    )


def test_the_q8_vector_tells_float32_from_float64_dequantization() -> None:
    spec, _ = _load("update_q8_float64_scales")
    msg, dense = spec["message"], spec["dense_delta"]
    differ = 0
    for name, tensor in msg["delta"].items():
        q, scale = np.array(tensor["values"]), msg["scales"][name]
        want = np.array(dense[name]["values"], np.float32)
        assert (q.astype(np.float32) * np.float32(scale) == want).all()
        differ += int(((q * scale).astype(np.float32) != want).sum())
    assert differ > 0


def test_check_mode_reports_stale_and_extra_files(tmp_path: Path, capsys) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "update_f32.bin").write_bytes(b"\x80")
    (tmp_path / "left_over.json").write_text("{}")
    assert main(["--out", str(tmp_path), "--check"]) == 1
    out = capsys.readouterr().out
    assert "update_f32.bin: stale" in out and "left_over.json: stale" in out


def test_the_chunk_vectors_make_up_the_global_model_vector() -> None:
    from fedmq.chunks import Chunk, Manifest, sha256

    pieces = [Chunk.decode(_load(f"chunk_{i}")[1]) for i in (0, 1)]
    whole = b"".join(c.data for c in pieces)
    model = _load("global_model")[1]
    manifest = Manifest.decode(_load("model_manifest")[1])
    assert whole == model and sha256(whole) == manifest.digest == pieces[0].digest
    assert (manifest.size, manifest.count) == (len(model), 2)
