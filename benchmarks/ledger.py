"""Ledger size under a real fleet: bytes on disk per applied update, and growth rate.

    .venv/bin/python -m benchmarks.ledger [--minutes 10] [--quick] [--json]

Twenty real edge agents (the demo's machinery: own MQTT connection, data shard and
compute delay each) train against the real aggregator with its SQLite ledger on,
through a broker (Mosquitto if installed, else the embedded one). Twice a second the
ledger's files (db + wal + shm) are measured; the report gives the applied updates,
the bytes on disk, bytes per applied update over the whole run and in steady state
(the least-squares slope over the second half, which averages out the WAL's
saw-tooth between checkpoints), and the growth per hour. JSON goes to benchmarks/out/ledger.json.
The target is never met (accuracy 2.0), so the run lasts the whole budget.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from tools.broker import choose_broker
from tools.sim.demo import DemoConfig, Snapshot, run_demo

LEDGER_FILES = ("ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm")


def ledger_bytes(out_dir: Path) -> int:
    """Bytes on disk of the ledger: its file, WAL, shared memory and blob log."""
    paths = [out_dir / name for name in LEDGER_FILES]
    blobs = out_dir / "ledger.sqlite-blobs"  # the payloads and states it references
    paths += list(blobs.iterdir()) if blobs.is_dir() else []
    total = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):  # a segment deleted meanwhile
            total += path.stat().st_blocks * 512
    return total


async def _run(minutes: float, devices: int, strategy: str, work: Path) -> dict[str, Any]:
    samples: list[tuple[float, int, int]] = []  # elapsed s, applied, bytes
    ledger_dir = work / "aggregator"

    def sample(snap: Snapshot) -> None:
        samples.append((snap.elapsed, snap.updates_applied, ledger_bytes(ledger_dir)))

    async with choose_broker("auto", 0) as broker:
        cfg = DemoConfig(
            devices=devices,
            strategy=strategy,
            broker=broker.url,
            budget=minutes * 60,
            target=2.0,
            out_dir=work,
            fleet="ledgerbench",
        )
        summary = await run_demo(cfg, sample)
        kind = type(broker).__name__
    return _report(samples, summary, ledger_bytes(ledger_dir), kind, minutes)


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope: the WAL's saw-tooth between checkpoints averages out."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def _report(
    samples: list[tuple[float, int, int]],
    summary: dict[str, Any],
    closed_bytes: int,
    broker: str,
    minutes: float,
) -> dict[str, Any]:
    t_end, applied, size = samples[-1]
    steady = [s for s in samples if s[0] >= t_end / 2]  # the second half
    per_update = _slope([(a, b) for _, a, b in steady])
    per_second = _slope([(t, b) for t, _, b in steady])
    return {
        "minutes": minutes,
        "broker": broker,
        "devices": summary["devices"],
        "strategy": summary["strategy"],
        "updates_applied": applied,
        "versions": summary["versions"],
        "ledger_bytes": size,
        "ledger_bytes_after_close": closed_bytes,
        "peak_ledger_bytes": max(s[2] for s in samples),
        "second_half_bytes": [min(s[2] for s in steady), max(s[2] for s in steady)],
        "bytes_per_update": round(size / max(applied, 1), 1),
        "steady_bytes_per_update": round(per_update, 1),
        "growth_bytes_per_hour": round(per_second * 3600),
        "updates_per_s": round(applied / max(t_end, 1e-9), 1),
        "series": samples[::20],  # every 10 s: elapsed s, applied, bytes
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--quick", action="store_true", help="one minute (a smoke run)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--strategy", default="fedbuff")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/ledger.json"))
    args = p.parse_args(argv)
    minutes = 1.0 if args.quick else args.minutes
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fedmq-ledger-bench-") as tmp:
        result = asyncio.run(_run(minutes, args.devices, args.strategy, Path(tmp)))
    result["started_at"] = started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            if key != "series":
                print(f"{key:28} {value}")
    return result


if __name__ == "__main__":
    main()
