"""Intake throughput: the aggregator against a bare MQTT subscriber, on the same stream.

    .venv/bin/python -m benchmarks throughput [--quick] [--json] [--repeats 5] [--profile]

A real Mosquitto (the packaged dev.conf). Two persistent sessions subscribe to the
fleet's updates, then N valid updates are published once, so both sessions hold the
same queued stream: 100 devices, increasing seqs, every update trained ``--lag``
versions back (FedAsync makes a version per update, FedBuff one per K = 10), small
random deltas that pass the defences. Then a bare aiomqtt QoS 1 subscriber drains its
session, and the real ``Aggregator`` (ledger, defences and ONNX export on: the
defaults) drains its own. Rates are messages per second from the moment each connects
to the moment the last message is handled (the aggregator's start-up, publishing
the model and its status, counts against it); the ratio divides the two measured in
the same round. ``--profile`` runs cProfile on the intake thread and the event loop of
one extra round and stores their top entries.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np

from aggregator.config import AggregatorConfig
from aggregator.intake import Outcome
from aggregator.service import Aggregator
from aggregator.strategies import make_strategy
from benchmarks.results import command_line, fmt, machine, spread, write_json, write_section
from fedmq.config import BrokerConfig
from fedmq.model import Arch, init_weights
from fedmq.topics import Topics
from fedmq.training import Hyper
from fedmq.wire import Update
from tools.broker import MosquittoBroker

MODELS = {"10k": Arch("mlp", (64, 128, 10)), "100k": Arch("mlp", (784, 128, 10))}
MESSAGES = {"10k": 4000, "100k": 600}
STRATEGIES = ("fedasync", "fedbuff")
DEVICES = 100
BUFFER_K = 10  # FedBuff's default K


def stream(arch: Arch, strategy: str, n: int, lag: int, seed: int = 0) -> list[bytes]:
    """N encoded updates that the aggregator will all apply, each ``lag`` versions old."""
    rng = np.random.default_rng(seed)
    shapes = arch.param_shapes()
    pool = [
        {k: rng.normal(0, 1e-3, s).astype(np.float32) for k, s in shapes.items()} for _ in range(32)
    ]
    per_version = 1 if strategy == "fedasync" else BUFFER_K
    out = []
    for i in range(n):
        out.append(
            Update.from_delta(
                pool[i % len(pool)],
                device=device(i),
                seq=i // DEVICES,
                base_version=max(0, i // per_version - lag),
                num_samples=32,
                steps=2,
                loss=0.5,
                sent_at=time.time(),
            ).encode()
        )
    return out


def device(i: int) -> str:
    return f"dev-{i % DEVICES:03d}"


async def _subscribe(client_kwargs: dict[str, Any], cid: str, topics: Topics) -> None:
    async with aiomqtt.Client(**client_kwargs, identifier=cid, clean_session=False) as c:
        await c.subscribe(topics.updates_filter, qos=1)


async def _publish(client_kwargs: dict[str, Any], topics: Topics, payloads: list[bytes]) -> None:
    async with aiomqtt.Client(
        **client_kwargs, identifier="bench-publisher", max_inflight_messages=50
    ) as c:
        c.pending_calls_threshold = 100  # 50 in flight at a time is the point
        for start in range(0, len(payloads), 50):
            chunk = payloads[start : start + 50]
            await asyncio.gather(
                *(
                    c.publish(topics.update(device(start + j)), p, qos=1)
                    for j, p in enumerate(chunk)
                )
            )


async def _bare(client_kwargs: dict[str, Any], cid: str, n: int) -> tuple[float, float]:
    """Seconds from connecting to the Nth message, acknowledging each (aiomqtt's default),
    and from the first message to the Nth."""
    start = time.perf_counter()
    count, first = 0, 0.0
    async with aiomqtt.Client(**client_kwargs, identifier=cid, clean_session=False) as c:
        async for _ in c.messages:
            count += 1
            if count == 1:
                first = time.perf_counter()
            if count == n:
                break
    end = time.perf_counter()
    return end - start, end - first


async def _aggregator(
    url: str, fleet: str, cid: str, strategy: str, arch: Arch, n: int, work: Path, prof: bool
) -> tuple[float, dict[str, Any]]:
    # The synthetic devices send no feature statistics: standardization would only wait.
    cfg = AggregatorConfig(
        broker=BrokerConfig.from_url(url),
        fleet=fleet,
        out_dir=work,
        client_id=cid,
        standardize=False,
    )
    strat = make_strategy(strategy, init_weights(arch, 0), 0, defence=True)
    agg = Aggregator(cfg, strat, arch, Hyper())
    stop = asyncio.Event()
    seen = 0
    done_at = first_at = 0.0
    handle = agg.inbox.on_outcome  # on the event loop after each update the intake handled

    def spy(outcome: Outcome) -> None:
        nonlocal seen, done_at, first_at
        handle(outcome)
        seen += 1
        if seen == 1:
            first_at = time.perf_counter()
        if seen == n:
            done_at = time.perf_counter()
            stop.set()

    agg.inbox.on_outcome = spy
    loop_prof, worker_prof = cProfile.Profile(), cProfile.Profile()
    if prof:
        agg._worker.submit(worker_prof.enable).result()
        loop_prof.enable()
    start = time.perf_counter()
    await agg.run(stop)
    if prof:
        loop_prof.disable()
        agg._worker.submit(worker_prof.disable).result()
    c = agg.counters
    info = {"accepted": c.accepted, "rejected": dict(c.rejected), "version": agg.strategy.version}
    # From the first update handled: without the start check and the first model's
    # publication and ONNX export, which a round of a few seconds otherwise counts.
    info["steady_s"] = done_at - first_at
    if prof:
        info["profile"] = {"intake thread": _top(worker_prof), "event loop": _top(loop_prof)}
    agg._worker.shutdown()  # run() closed the intake and the publisher
    return done_at - start, info


def _top(prof: cProfile.Profile, n: int = 18) -> str:
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).strip_dirs().sort_stats("tottime").print_stats(n)
    lines = buf.getvalue().splitlines()
    first = next(i for i, line in enumerate(lines) if "ncalls" in line)
    return "\n".join(lines[first - 2 : first + n + 1])


async def _round(
    broker: MosquittoBroker, model: str, strategy: str, n: int, lag: int, r: int, prof: bool
) -> dict[str, Any]:
    fleet = f"tp{r}{model}{strategy}"
    topics = Topics(fleet)
    kwargs = BrokerConfig.from_url(broker.url).client_kwargs()
    bare_id, agg_id = f"bare-{fleet}", f"agg-{fleet}"
    for cid in (bare_id, agg_id):
        await _subscribe(kwargs, cid, topics)
    payloads = stream(MODELS[model], strategy, n, lag, seed=r)
    await _publish(kwargs, topics, payloads)
    bare_s, bare_steady_s = await _bare(kwargs, bare_id, n)
    with tempfile.TemporaryDirectory(prefix="fedmq-tp-") as tmp:
        agg_s, info = await _aggregator(
            broker.url, fleet, agg_id, strategy, MODELS[model], n, Path(tmp), prof
        )
    if info["accepted"] != n:
        raise RuntimeError(f"the stream was not all applied: {info}")
    return {
        "bare_per_s": n / bare_s,
        "aggregator_per_s": n / agg_s,
        "ratio": bare_s / agg_s,
        "steady_ratio": bare_steady_s / info["steady_s"],
        "bytes": len(payloads[0]),
        **info,
    }


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    models = ["10k"] if args.quick else args.models.split(",")
    results: dict[str, Any] = {}
    async with MosquittoBroker() as broker:
        for model in models:
            n = 200 if args.quick else MESSAGES[model]
            for strategy in STRATEGIES:
                rounds = []
                for r in range(args.repeats):
                    rounds.append(await _round(broker, model, strategy, n, args.lag, r, False))
                    print(f"{model} {strategy} round {r}: {_line(rounds[-1])}", flush=True)
                entry: dict[str, Any] = {
                    "messages": n,
                    "update_bytes": rounds[0]["bytes"],
                    "rounds": rounds,
                    **{
                        k: spread([x[k] for x in rounds])
                        for k in ("bare_per_s", "aggregator_per_s", "ratio", "steady_ratio")
                    },
                }
                if args.profile:
                    entry["profile"] = (
                        await _round(broker, model, strategy, n, args.lag, 99, True)
                    )["profile"]
                results[f"{model}/{strategy}"] = entry
    return results


def _line(r: dict[str, Any]) -> str:
    return (
        f"bare {r['bare_per_s']:,.0f}/s, aggregator {r['aggregator_per_s']:,.0f}/s,"
        f" ratio {r['ratio']:.3f}, from the first message {r['steady_ratio']:.3f}"
    )


def _table(results: dict[str, Any]) -> str:
    rows = [
        "| model | strategy | update bytes | messages | bare subscriber /s | aggregator /s"
        " | ratio (goal ≥ 0.9) | ratio from the first message |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, e in results.items():
        model, strategy = key.split("/")
        rows.append(
            f"| {model} | {strategy} | {e['update_bytes']:,} | {e['messages']:,}"
            f" | {fmt(e['bare_per_s'])} | {fmt(e['aggregator_per_s'])} | {fmt(e['ratio'], 3)}"
            f" | {fmt(e['steady_ratio'], 3)} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10k model, 200 messages, one round")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--lag", type=int, default=30, help="versions between base and current")
    p.add_argument("--profile", action="store_true", help="one more round under cProfile")
    p.add_argument("--models", default=",".join(MODELS), help="a subset of 10k,100k")
    p.add_argument("--out-dir", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats = 1
    started = time.time()
    results = asyncio.run(_run(args))
    report = {
        "benchmark": "throughput",
        "command": command_line("throughput", argv or []),
        "started_at": started,
        "machine": machine(),
        "setup": {"devices": DEVICES, "lag": args.lag, "repeats": args.repeats},
        "results": results,
    }
    write_json("throughput", report, args.out_dir)
    print(_table(results))
    if args.json:
        print(json.dumps(report, indent=2))
    if not args.quick:
        body = (
            "median (min-max) of the rounds; ratio = bare time / aggregator time per round,"
            " each from connecting; the last column times each from its first message (the"
            " aggregator's start check and first model publication left out).\n\n"
        )
        write_section(
            "throughput",
            "Intake throughput over Mosquitto",
            report["command"],
            body + _table(results),
            report,
        )
    return report
