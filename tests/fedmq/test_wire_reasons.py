"""Every wire rejection has its reason, and docs/wire.md names exactly those reasons."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import msgpack
import numpy as np
import pytest

from fedmq.errors import TopicError, WireError
from fedmq.topics import validate_device_id
from fedmq.wire import MAX_BYTES, GlobalModel, Update
from tests.fedmq.wire_payloads import (
    ARCH,
    DROP,
    HYPER,
    SHAPES,
    W,
    dup,
    model_map,
    pack,
    pack_pairs,
    q8_map,
    tensor_ext,
    update_map,
)

# reason -> [(message class, payload)], each with exactly one defect.
BAD: dict[str, list[tuple[type, bytes]]] = {
    "too_large": [(Update, b"\x80" * (MAX_BYTES + 1))],
    "malformed": [
        (Update, b"\xc1"),
        (Update, pack(update_map()) + b"\x00"),  # trailing bytes
        (Update, b"\x81\x01\x02"),  # an int key
        (Update, b"\x81\xc4\x00\x01"),  # a bin key, even empty
        (Update, pack_pairs([*update_map().items(), ("x", b"")])),  # a bin value
        (Update, "not bytes"),
    ],
    "duplicate_key": [
        (Update, dup(update_map(), "seq", 2)),
        (Update, dup(update_map(), "v", 1)),
        (Update, pack(update_map()).replace(b"\xa2w0", b"\xa2b0", 1)),  # inside delta
        (GlobalModel, pack(model_map()).replace(b"\xa2mu", b"\xa2lr", 1)),  # inside hyper
    ],
    "not_a_map": [(Update, msgpack.packb([1, 2, 3]))],
    "bad_version": [(Update, pack(update_map(v=v))) for v in (2, 0, True, 1.0, "1", None, DROP)],
    "bad_kind": [(Update, pack(update_map(kind="global_model"))), (Update, pack({"v": 1}))],
    "missing_field": [
        (Update, pack(update_map(seq=DROP))),
        (GlobalModel, pack(model_map(run=DROP))),
        (GlobalModel, pack(model_map(hyper={k: v for k, v in HYPER.items() if k != "lr"}))),
        (GlobalModel, pack(model_map(arch={"kind": "mlp", "layers": [4, 3, 2]}))),
    ],
    "unknown_field": [
        (Update, pack(update_map(extra=1))),
        (GlobalModel, pack(model_map(hyper={**HYPER, "momentum": 0.9}))),
        (GlobalModel, pack(model_map(arch={**ARCH.to_dict(), "extra": 1}))),
    ],
    "bad_type": [
        (Update, pack(update_map(seq="1"))),
        (Update, pack(update_map(seq=1.0))),
        (Update, pack(update_map(seq=True))),
        (Update, pack(update_map(device=7))),
        (Update, pack(update_map(delta={"w0": [1, 2]}))),
        (GlobalModel, pack(model_map(hyper={**HYPER, "epochs": 1.0}))),
        (GlobalModel, pack(model_map(arch={**ARCH.to_dict(), "layers": [4, 3.0, 2]}))),
    ],
    "bad_value": [
        (Update, pack(update_map(num_samples=0))),
        (Update, pack(update_map(metrics={"": 1.0}))),
        (Update, pack(update_map(encoding="f64"))),
        (Update, pack(update_map(scales={"w0": 1.0}))),  # f32 carries no scales
        (GlobalModel, pack(model_map(run="ABCDEF0123456789"))),
        (GlobalModel, pack(model_map(digest="0" * 63))),
        (GlobalModel, pack(model_map(arch={**ARCH.to_dict(), "kind": "cnn"}))),
        (GlobalModel, pack(model_map(hyper={**HYPER, "epochs": 0}))),
    ],
    "bad_device_id": [
        (Update, pack(update_map(device=d)))
        for d in ("", "a/b", "a+b", "a#b", "a\0b", "a b", "$SYS", "x" * 65)
    ],
    "bad_dtype": [
        (Update, pack(update_map(delta={k: v.astype(np.float16) for k, v in W.items()}))),
        (Update, pack(update_map(delta={"w0": tensor_ext(9, (1,), b"\0")}))),
        (GlobalModel, pack(model_map(weights={k: v.astype(np.float16) for k, v in W.items()}))),
    ],
    "bad_shape": [
        (Update, pack(update_map(delta={"w0": np.zeros((4, 3), np.float32)}))),
        (Update, pack(update_map(delta={**W, "w0": np.zeros((3, 4), np.float32)}))),
        (
            GlobalModel,
            pack(model_map(arch={"kind": "mlp", "layers": [4, 5, 2], "activation": "relu"})),
        ),
    ],
    "bad_tensor": [
        (Update, pack(update_map(delta={"w0": tensor_ext(1, (4, 3), b"\0" * 7)}))),
        (Update, pack(update_map(delta={"w0": msgpack.ExtType(1, b"\1")}))),
        (Update, pack(update_map(delta={"w0": msgpack.ExtType(1, b"\1\x09" + b"\0" * 40)}))),
        (Update, pack(update_map(delta={"w0": msgpack.ExtType(1, b"\1\2\0\0")}))),
    ],
    "bad_ext": [
        (Update, pack(update_map(delta={"w0": msgpack.ExtType(7, b"\1\0")}))),
        (Update, pack(update_map(delta={"w0": msgpack.Timestamp(1, 0)}))),
    ],
    "non_finite": [
        (Update, pack(update_map(delta={**W, "b0": np.array([0, np.nan, 0], np.float32)}))),
        (Update, pack(update_map(loss=float("inf")))),
        (GlobalModel, pack(model_map(weights={**W, "b1": np.array([np.inf, 0], np.float32)}))),
    ],
    "bad_digest": [
        (GlobalModel, pack(model_map(digest="0" * 64))),
        (GlobalModel, pack(model_map(weights={**W, "b1": np.array([1, 0], np.float32)}))),
        # Same weight bytes, another arch: the old sha256 could not tell these apart.
        (GlobalModel, pack(model_map(arch={**ARCH.to_dict(), "activation": "tanh"}))),
    ],
}


BAD["bad_value"] += [
    (Update, pack({**q8_map(), "scales": {"w0": 1.0}})),  # one scale per tensor
    (Update, pack(q8_map(w0=0.0))),
    (Update, pack(q8_map(w0=1e-50))),  # 0 in float32
    (Update, pack(q8_map(w0=1e37))),  # 128 x scale overflows float32
]


@pytest.mark.parametrize(
    ("reason", "cls", "payload"),
    [(reason, cls, data) for reason, cases in sorted(BAD.items()) for cls, data in cases],
)
def test_each_rejection_has_its_reason(reason: str, cls: type, payload: bytes) -> None:
    context = {"shapes": SHAPES} if cls is Update else {}
    with pytest.raises(WireError) as err:
        cls.decode(payload, **context)
    assert err.value.reason == reason, err.value


def test_valid_fixtures_decode() -> None:
    # The defective payloads above are one change away from these.
    Update.decode(pack(update_map()), shapes=SHAPES)
    Update.decode(pack(q8_map()), shapes=SHAPES)
    GlobalModel.decode(pack(model_map()))
    GlobalModel.decode(pack_pairs(list(model_map().items())))


def test_size_bombs_are_refused_before_allocation() -> None:
    # A map header claiming 2**32-1 entries, and a str header claiming 4 GiB.
    for data in (b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff" + b"x" * 10):
        with pytest.raises(WireError) as err:
            Update.decode(data)
        assert err.value.reason == "malformed"
    # A tensor whose shape claims 2**64 elements but carries 4 bytes.
    bomb = pack(update_map(delta={"w0": tensor_ext(1, (2**32 - 1, 2**32 - 1), b"\0" * 4)}))
    with pytest.raises(WireError) as err:
        Update.decode(bomb)
    assert err.value.reason == "bad_tensor"


# -- the spec names exactly the reasons the code gives --------------------------------

ROOT = Path(__file__).resolve().parents[2]
SPEC = (ROOT / "docs" / "wire.md").read_text(encoding="utf-8")


def _table_reasons(heading: str) -> set[str]:
    section = SPEC.split(heading, 1)[1].split("\n#", 1)[0]
    return {
        r
        for row in re.findall(r"^\| (`.+?`) \|", section, re.M)
        for r in re.findall(r"`(\w+)`", row)
    }


def _raised(paths: list[Path], cls: str) -> set[str]:
    text = "\n".join(p.read_text(encoding="utf-8") for p in paths)
    return set(re.findall(rf'{cls}\(\s*"(\w+)"', text))


def test_spec_lists_every_wire_reason_and_no_other() -> None:
    code = _raised(
        [
            ROOT / "fedmq" / f
            for f in (
                "wire.py",
                "envelope.py",
                "history.py",
                "featurestats.py",
                "fields.py",
                "tensors.py",
            )
        ],
        "WireError",
    )
    documented = _table_reasons("### 5.1 Wire reasons")
    assert code == documented
    # ... and each of them is produced by a payload in BAD.
    assert set(BAD) == code


def test_spec_lists_every_aggregator_reason_and_no_other() -> None:
    # The aggregator's own modules, and the chunk reassembler it drives (fedmq/chunks.py).
    agg = [*sorted((ROOT / "aggregator").rglob("*.py")), ROOT / "fedmq" / "chunks.py"]
    documented = _table_reasons("### 5.2 Aggregator reasons")
    literals = set(re.findall(r'"(\w+)"', "\n".join(p.read_text(encoding="utf-8") for p in agg)))
    assert documented <= literals, documented - literals
    wire = _table_reasons("### 5.1 Wire reasons")
    assert _raised(agg, "UpdateRejected") <= documented | wire


def test_the_device_id_rule_in_the_spec_is_the_code_rule() -> None:
    # wire.md: no '/', '+', '#', no character of Unicode category C or Z, no leading '$'.
    assert "general category C" in SPEC
    differ = []
    for cp in range(0x110000):
        c = chr(cp)
        spec_ok = c not in "/+#" and unicodedata.category(c)[0] not in "CZ"
        try:
            validate_device_id("a" + c)
            code_ok = True
        except TopicError:
            code_ok = False
        if spec_ok != code_ok:
            differ.append(hex(cp))
    assert not differ
