"""Hostile input against the aggregator's front door, many times over.

    .venv/bin/python -m benchmarks.fuzz [--cases 100000] [--seed 0] [--out benchmarks/out/fuzz.json]

Feeds ``Aggregator.handle`` (topic check, wire decoding, identity, dedupe, strategy)
with random bytes, truncated and mutated valid payloads, msgpack size bombs, wrong
dtypes and shapes, NaN/inf, a device claiming another's topic, replayed and very old
seqs, base versions beyond the staleness bound, oversize payloads, duplicate keys,
``v`` that only equals 1 (``true``, ``1.0``), floats and bools for ints, and device
ids that break the topic rules. Checks that
nothing but a counted rejection happens and that the global model stays byte-identical.
"""

from __future__ import annotations

import argparse
import json
import logging
import struct
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from aggregator.config import AggregatorConfig
from aggregator.service import Aggregator
from aggregator.strategies import make_strategy
from fedmq.config import BrokerConfig
from fedmq.model import Arch, init_weights
from fedmq.topics import Topics
from fedmq.training import Hyper
from fedmq.wire import Update, encode_tensor, weights_digest

ARCH = Arch("mlp", (8, 6, 3))
TOPICS = Topics("fuzz")
MAX_BYTES = 64 * 1024


def _valid(device: str, seq: int, base: int, rng: np.random.Generator, /, **over: Any) -> dict:
    delta = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in
             init_weights(ARCH, 0).items()}  # fmt: skip
    u = Update.from_delta(
        delta, device=device, seq=seq, base_version=base, num_samples=3, steps=1, loss=0.1
    )
    body = {"v": 1, "kind": "update", **u.to_map()}
    body.update(over)
    return body


def _pack(body: Any) -> bytes:
    return msgpack.packb(body, use_bin_type=True, default=encode_tensor)


class _Raw(bytes):
    """A value already in msgpack form."""


def _pack_pairs(pairs: list[tuple[str, Any]]) -> bytes:
    """A map written pair by pair, so that it can hold a key twice."""
    head = b"\xde" + struct.pack(">H", len(pairs))
    return head + b"".join(_pack(k) + (v if isinstance(v, _Raw) else _pack(v)) for k, v in pairs)


def _case(rng: np.random.Generator, base: bytes, version: int, seq: int) -> tuple[str, bytes]:
    """One hostile (topic, payload)."""
    kind = int(rng.integers(17))
    topic = TOPICS.update("victim")
    if kind == 0:  # random bytes
        return topic, rng.bytes(int(rng.integers(0, 512)))
    if kind == 1:  # truncated valid payload
        return topic, base[: int(rng.integers(0, len(base)))]
    if kind == 2:  # mutated valid payload
        data = bytearray(base)
        for _ in range(int(rng.integers(1, 9))):
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        return topic, bytes(data)
    if kind == 3:  # msgpack size bombs: huge map / array / str / ext headers
        head = [b"\xdf", b"\xdd", b"\xdb", b"\xc9"][int(rng.integers(4))]
        return topic, head + b"\xff\xff\xff\xff" + rng.bytes(16)
    if kind == 4:  # a tensor whose shape claims far more than it carries
        ext = msgpack.ExtType(1, struct.pack("<BBII", 1, 2, 2**31, 2**31) + b"\0" * 8)
        return topic, _pack(_valid("victim", 10**9, version, rng, delta={"w0": ext}))
    if kind == 5:  # wrong dtype
        delta = {k: v.astype(np.int32) for k, v in init_weights(ARCH, 0).items()}
        return topic, _pack(_valid("victim", 10**9, version, rng, delta=delta))
    if kind == 6:  # wrong shape
        delta = {k: np.zeros((2, 2), np.float32) for k in init_weights(ARCH, 0)}
        return topic, _pack(_valid("victim", 10**9, version, rng, delta=delta))
    if kind == 7:  # NaN / inf
        delta = {k: np.full(v.shape, [np.nan, np.inf][int(rng.integers(2))], np.float32)
                 for k, v in init_weights(ARCH, 0).items()}  # fmt: skip
        return topic, _pack(_valid("victim", 10**9, version, rng, delta=delta))
    if kind == 8:  # a device claiming to be another
        return TOPICS.update("mallory"), _pack(_valid("victim", 10**9, version, rng))
    if kind == 9:  # replayed seq (the last accepted at start) and very old seqs
        return topic, _pack(_valid("victim", int(rng.integers(0, 10)), version, rng))
    if kind == 10:  # base version beyond the staleness bound, or from the future
        stale = version - 5 - int(rng.integers(0, version - 4))
        future = version + 1 + int(rng.integers(100))
        return topic, _pack(_valid("victim", seq, [stale, future][int(rng.integers(2))], rng))
    if kind == 11:  # oversize
        return topic, b"\x80" + bytes(MAX_BYTES)
    if kind == 12:  # not an update topic, or not ours
        t = ["fl/fuzz/model/global", "fl/other/updates/victim", "x/y", "fl/fuzz/updates/a+b"]
        return t[int(rng.integers(len(t)))], base
    if kind == 14:  # a key twice, at the top or inside delta
        body = _valid("victim", 10**9, version, rng)
        if rng.integers(2):
            return topic, _pack_pairs([*body.items(), ("seq", 10**9 + 1)])
        inner = _pack_pairs([*body["delta"].items(), ("w0", body["delta"]["w0"])])
        return topic, _pack_pairs(
            [(k, _Raw(inner) if k == "delta" else v) for k, v in body.items()]
        )
    if kind == 15:  # device ids no topic level may carry
        bad = ["", "vic/tim", "vic+tim", "vic#tim", "vic\0tim", "vic tim", "$victim", "v" * 65]
        return topic, _pack(_valid(bad[int(rng.integers(len(bad)))], 10**9, version, rng))
    if kind == 16:  # not quite ints: v, seq or num_samples as bool or float
        field = [{"v": True}, {"v": 1.0}, {"seq": 1e9}, {"num_samples": True}]
        return topic, _pack(_valid("victim", 10**9, version, rng, **field[int(rng.integers(4))]))
    # unknown fields, wrong kinds and versions
    field = [{"v": 2}, {"kind": "global_model"}, {"extra": 1}, {"seq": "7"}][int(rng.integers(4))]
    return topic, _pack(_valid("victim", 10**9, version, rng, **field))


def run(cases: int, seed: int = 0, out_dir: Path | None = None) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    logging.getLogger("fedmq.aggregator").setLevel(logging.ERROR)
    cfg = AggregatorConfig(
        broker=BrokerConfig.from_url("mqtt://127.0.0.1:1"),
        fleet="fuzz",
        out_dir=out_dir or Path("benchmarks/out/fuzz"),
        max_update_bytes=MAX_BYTES,
        ledger=False,
    )
    strategy = make_strategy("fedasync", init_weights(ARCH, 0), 0, max_staleness=4)
    agg = Aggregator(cfg, strategy, ARCH, Hyper())
    # Honest updates first, so replays, old seqs and stale bases have something to hit.
    for seq in range(10):
        assert agg.handle(TOPICS.update("victim"), _pack(_valid("victim", seq, seq, rng)))
    before = (agg.strategy.version, weights_digest(ARCH, agg.strategy.weights))
    # The base for truncation and mutation claims another device: a mutant that still
    # decodes is then an identity_mismatch, never an update a few flipped bytes made valid.
    base = _pack(_valid("mallory", 99, agg.strategy.version, rng))
    started = time.perf_counter()
    changed = 0
    for i in range(cases):
        topic, payload = _case(rng, base, agg.strategy.version, 100 + i)
        changed += agg.handle(topic, payload)
    seconds = time.perf_counter() - started
    after = (agg.strategy.version, weights_digest(ARCH, agg.strategy.weights))
    return {
        "cases": cases,
        "seed": seed,
        "seconds": round(seconds, 2),
        "cases_per_s": round(cases / seconds),
        "accepted": agg.counters.accepted - 10,
        "new_versions": int(changed),
        "rejected_by_reason": dict(sorted(agg.counters.rejected.items())),
        "model_unchanged": before == after,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/fuzz.json"))
    args = p.parse_args(argv)
    result = run(args.cases, args.seed, args.out.parent / "fuzz")
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
