"""The intake alone, without MQTT: updates per second with the ledger, against without it.

    .venv/bin/python -m benchmarks intake [--repeats 5] [--quick] [--json]

The same stream as ``throughput`` (valid updates from 100 devices, each 30 versions
stale, 10k- and 100k-parameter models) goes through ``Intake.handle_batch`` in batches
of 128, as the daemon hands them over, with defences on: once with no ledger (the
baseline) and once with the SQLite ledger and its blob log in a temporary directory.
Rounds alternate between the two, so the load moves both alike. The ratio (ledger ÷
no ledger) is what the ledger costs. ``throughput`` then shows what MQTT adds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from aggregator.intake import Intake
from aggregator.ledger import Ledger
from aggregator.strategies import make_strategy
from benchmarks.results import command_line, fmt, machine, spread, write_json, write_section
from benchmarks.throughput import MESSAGES, MODELS, STRATEGIES, device, stream
from fedmq.model import init_weights
from fedmq.topics import Topics

BATCH = 128  # what the daemon hands over at most is 256; a half-full batch is typical


def rate(model: str, strategy: str, messages: list[tuple[str, bytes]], ledger: bool) -> float:
    """Updates per second through one fresh intake; every one must be applied."""
    arch = MODELS[model]
    with tempfile.TemporaryDirectory() as work:
        store = Ledger(Path(work) / "ledger.sqlite") if ledger else None
        strat = make_strategy(strategy, init_weights(arch, 0), 0, defence=True)
        intake = Intake(Topics("bench"), arch, strat, ledger=store)
        start = time.perf_counter()
        for i in range(0, len(messages), BATCH):
            intake.handle_batch(messages[i : i + BATCH])
        elapsed = time.perf_counter() - start
        applied = intake.counters.accepted
        intake.close()
    if applied != len(messages):
        raise RuntimeError(f"{model}/{strategy}: {applied} of {len(messages)} applied")
    return len(messages) / elapsed


def _run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for model in ["10k"] if args.quick else args.models.split(","):
        n = 200 if args.quick else MESSAGES[model]
        for strategy in STRATEGIES:
            topics = Topics("bench")
            payloads = stream(MODELS[model], strategy, n, args.lag)
            messages = [(topics.update(device(i)), p) for i, p in enumerate(payloads)]
            rounds = []
            for r in range(args.repeats):
                bare = rate(model, strategy, messages, ledger=False)
                kept = rate(model, strategy, messages, ledger=True)
                rounds.append({"no_ledger_per_s": bare, "ledger_per_s": kept, "ratio": kept / bare})
                print(
                    f"{model} {strategy} round {r}: no ledger {bare:,.0f}/s,"
                    f" ledger {kept:,.0f}/s, ratio {kept / bare:.3f}",
                    flush=True,
                )
            results[f"{model}/{strategy}"] = {
                "messages": n,
                "update_bytes": len(payloads[0]),
                "rounds": rounds,
                **{k: spread([x[k] for x in rounds]) for k in rounds[0]},
            }
    return results


def _table(results: dict[str, Any]) -> str:
    rows = [
        "| model | strategy | update bytes | messages | no ledger /s | ledger /s | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, e in results.items():
        model, strategy = key.split("/")
        rows.append(
            f"| {model} | {strategy} | {e['update_bytes']:,} | {e['messages']:,}"
            f" | {fmt(e['no_ledger_per_s'])} | {fmt(e['ledger_per_s'])} | {fmt(e['ratio'], 3)} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10k model, 200 messages, one round")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--lag", type=int, default=30, help="versions between base and current")
    p.add_argument("--models", default=",".join(MODELS), help="a subset of 10k,100k")
    p.add_argument("--out-dir", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats = 1
    started = time.time()
    results = _run(args)
    report = {
        "benchmark": "intake",
        "command": command_line("intake", argv or []),
        "started_at": started,
        "machine": machine(),
        "setup": {"batch": BATCH, "lag": args.lag, "repeats": args.repeats},
        "results": results,
    }
    write_json("intake", report, args.out_dir)
    print(_table(results))
    if args.json:
        print(json.dumps(report, indent=2))
    if not args.quick:
        body = (
            "median (min-max) of the rounds; ratio = ledger rate / no-ledger rate, per round.\n\n"
        )
        write_section("intake", "The intake alone: what the ledger costs", report["command"],
                      body + _table(results), report)  # fmt: skip
    return report
