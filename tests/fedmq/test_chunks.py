"""fedmq.chunks: splitting, the chunk decoder (fuzzed), reassembly within bounds."""

from __future__ import annotations

import contextlib
import dataclasses
import os

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmq.chunks import (
    MAX_CHUNKS,
    Chunk,
    Manifest,
    ModelChunks,
    Reassembler,
    assemble,
    is_chunk,
    sha256,
    split,
)
from fedmq.errors import WireError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def pieces(payload: bytes, limit: int = 1024, of: str = "update") -> list[Chunk]:
    return split(payload, of, limit)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 20_000), st.integers(1024, 4096), st.integers(0, 2**32 - 1))
def test_split_fits_the_limit_and_reassembles_in_any_order(size: int, limit: int, seed: int):
    payload = np.random.default_rng(seed).bytes(size)
    chunks = split(payload, "update", limit)
    if size <= limit:
        assert chunks == []
        return
    assert all(len(c.encode()) <= limit for c in chunks)
    assert [Chunk.decode(c.encode()) for c in chunks] == chunks  # the codec round-trips
    order = np.random.default_rng(seed).permutation(len(chunks))
    r = Reassembler()
    out = [res for i in order for res in r.offer("dev", chunks[i], token=int(i))]
    assert len(out) == 1 and out[0].payload == payload and out[0].reason is None
    assert sorted(out[0].tokens) == list(range(len(chunks)))
    assert r.nbytes == r.nchunks == len(r) == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzzed_bytes_decode_or_raise_wire_error_only(data: bytes) -> None:
    with contextlib.suppress(WireError):
        Chunk.decode(data)
    assert is_chunk(data) in (True, False)


_FIELD = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=70)
)


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(["of", "digest", "size", "count", "index", "data", "extra"]),
    value=_FIELD,
    mutate=st.integers(0, 3),
)
def test_mutated_chunks_are_refused_with_a_wire_reason(field: str, value, mutate: int) -> None:
    good = pieces(os.urandom(3000))[1]
    body = msgpack.unpackb(good.encode(), raw=False)
    if mutate == 0:
        body[field] = value
    elif mutate == 1:
        body.pop(field, None)
    elif mutate == 2:  # data a tensor of another dtype or length
        body["data"] = msgpack.ExtType(1, bytes([1, 1, 4, 0, 0, 0]) + b"\0" * 16)
    else:
        body["index"] = body["count"]
    data = msgpack.packb(body, use_bin_type=True)
    try:
        chunk = Chunk.decode(data)
    except WireError as exc:
        assert exc.reason in {
            "bad_type", "bad_value", "bad_dtype", "bad_tensor", "bad_ext", "unknown_field",
            "missing_field", "non_finite", "malformed",
        }  # fmt: skip
    else:  # what decodes is a valid chunk (another index of equal length, say)
        assert chunk.encode() == data and len(chunk.data) == len(good.data)


@pytest.mark.parametrize(
    "count,size,what",
    [(3, 4, "cannot split"), (MAX_CHUNKS + 1, 10**7, "outside")],
)
def test_impossible_geometry_is_bad_value(count: int, size: int, what: str) -> None:
    body = {"v": 1, "kind": "chunk", "of": "update", "digest": "0" * 64, "size": size}
    data = msgpack.ExtType(1, bytes([4, 1, 2, 0, 0, 0, 1, 2]))
    body |= {"count": count, "index": 0, "data": data}
    with pytest.raises(WireError, match=what) as err:
        Chunk.decode(msgpack.packb(body))
    assert err.value.reason == "bad_value"


def test_a_repeat_is_harmless_a_conflict_or_a_bad_digest_refuses_the_whole() -> None:
    payload = os.urandom(5000)
    a, b, *rest = pieces(payload)
    r = Reassembler()
    assert r.offer("d", a, 1) == []
    [repeat] = r.offer("d", a, 2)
    assert (repeat.payload, repeat.reason, repeat.tokens) == (None, None, [2])
    forged = Chunk(b.of, b.digest, b.size, b.count, b.index, bytes(len(b.data)))
    r.offer("d", forged, 3)
    [conflict] = r.offer("d", b, 4)  # the same index, other data
    assert conflict.reason == "chunk_conflict" and conflict.tokens == [1, 3, 4]
    assert all(res.reason is None for c in rest for res in r.offer("d", c, 5))  # leftovers
    assert len(r) == 0
    # All chunks present, but one replaced consistently: the digest catches it.
    r = Reassembler()
    out = [res for c in [a, forged, *rest] for res in r.offer("d", c)]
    assert [res.reason for res in out] == ["chunk_digest"]


def test_bounds_timeouts_and_size_limits() -> None:
    clock = Clock()
    r = Reassembler(max_message=10_000, max_chunks=12, per_sender=2, timeout=5.0, clock=clock)
    m1, m2, m3 = (pieces(os.urandom(4000)) for _ in range(3))
    r.offer("d", m1[0])
    r.offer("d", m2[0])
    [evicted] = r.offer("d", m3[0])  # a third partial of one sender evicts its oldest
    assert evicted.reason == "chunk_evicted" and evicted.digest == m1[0].digest
    [big] = r.offer("e", pieces(os.urandom(12_000))[0])
    assert big.reason == "too_large"
    clock.now = 6.0
    assert sorted(res.reason for res in r.expire()) == ["chunk_missing"] * 2
    assert r.nbytes == r.nchunks == 0
    # The chunk bound: the oldest partial of any sender goes first.
    r = Reassembler(max_chunks=6, per_sender=2)
    for c in m1[:4]:
        r.offer("a", c)
    out = [res for c in m2[:3] for res in r.offer("b", c)]
    assert [(res.sender, res.reason) for res in out] == [("a", "chunk_evicted")]
    assert r.nchunks == 3


def test_a_device_assembles_from_manifest_and_chunks_in_either_order() -> None:
    model = os.urandom(6000)
    chunks = pieces(model, of="global_model")
    manifest = Manifest("ab" * 8, 3, sha256(model), len(model), len(chunks))
    for manifest_first in (True, False):
        mc = ModelChunks()
        got = []
        if manifest_first:
            got.append(assemble(mc, manifest.encode(), None))
        stale = pieces(os.urandom(6000), of="global_model")[0]  # an older version's
        got.append(assemble(mc, stale.encode(), 0))
        got += [assemble(mc, c.encode(), c.index) for c in chunks]
        if not manifest_first:
            got.append(assemble(mc, manifest.encode(), None))
        assert [g for g in got if g is not None] == [model]
    # A whole model passes straight through; a chunk on the wrong topic index is refused.
    assert assemble(ModelChunks(), model, None) == model
    with pytest.raises(WireError):
        assemble(ModelChunks(), chunks[1].encode(), 0)


def test_a_device_rebuilds_a_model_whose_first_chunks_timed_out() -> None:
    # Pull on ready: the agent unsubscribed mid-model and trained longer than the timeout;
    # on SUBSCRIBE the broker sends every retained chunk and the manifest again.
    clock = Clock()
    model = os.urandom(6000)
    chunks = pieces(model, of="global_model")
    manifest = Manifest("ab" * 8, 3, sha256(model), len(model), len(chunks))
    mc = ModelChunks(timeout=30.0, clock=clock)
    assert assemble(mc, chunks[0].encode(), 0) is None
    clock.now = 45.0  # the partial expires on the next chunk
    got = [assemble(mc, c.encode(), c.index) for c in chunks]
    got.append(assemble(mc, manifest.encode(), None))
    assert [g for g in got if g is not None] == [model]


def test_a_new_session_reassembles_what_the_old_one_completed_but_did_not_commit() -> None:
    r = Reassembler()
    chunks = pieces(os.urandom(5000))
    whole = [res for c in chunks for res in r.offer("d", c)]
    assert [res.payload is not None for res in whole] == [True]
    r.clear()  # a new MQTT session: the unacknowledged chunks come again
    again = [res for c in chunks for res in r.offer("d", c)]
    assert [res.payload for res in again] == [whole[0].payload]


def test_a_too_large_chunk_ends_its_partial_once() -> None:
    r = Reassembler(max_message=100_000)
    good = pieces(os.urandom(4000))
    r.offer("d", good[0], token="t0")
    # A chunk of the same digest now claiming a message far over the limit.
    bad = dataclasses.replace(pieces(os.urandom(200_000))[0], digest=good[0].digest)
    [refused] = r.offer("d", bad, token="t1")
    assert refused.reason == "too_large" and refused.tokens == ["t0", "t1"]
    assert len(r) == 0 and r.nbytes == r.nchunks == 0  # nothing left to time out later
