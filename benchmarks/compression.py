"""Bytes per update and final accuracy per encoding, with and without error feedback.

    .venv/bin/python -m benchmarks.compression [--quick] [--json] [--budget 15]

Each encoding runs ``fedmq simulate`` (virtual clock, the real wire codec and Intake)
on the same fleet: digits, 50 devices, Dirichlet 0.3, lognormal:0.05,1.0, seed 0,
FedBuff with its defaults and defences on. Bytes per update is the length of the
encoded ``Update`` message of a real local delta (1 epoch on device 0's shard); f32
is the baseline measured in the same run. Error feedback (``fedmq.feedback``) is on
unless the row says otherwise. ``--quick`` runs a tiny fleet and leaves RESULTS.md alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.fleet import write_report
from benchmarks.results import replace_section
from fedmq.feedback import ErrorFeedback
from fedmq.model import init_weights
from fedmq.training import train_local
from tools.sim.simulate import SimConfig, simulate
from tools.sim.tasks import load_task

# (encoding, error feedback)
CASES = (("f32", False), ("f16", True), ("f16", False), ("q8", True), ("q8", False))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/out"))
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--budget", type=float, default=15.0, help="virtual seconds per encoding")
    p.add_argument("--seed", type=int, default=0)
    return p


def update_bytes(encoding: str, seed: int) -> int:
    task = load_task("digits", seed=seed)
    rng = np.random.default_rng(seed)
    x, y = task.train.x[:30], task.train.y[:30]
    delta, stats = train_local(task.arch, init_weights(task.arch, seed), x, y, task.hyper, rng)
    update = ErrorFeedback().encode(
        delta,
        encoding=encoding,
        device="dev-000",
        seq=0,
        base_version=0,
        num_samples=len(x),
        steps=stats.steps,
        loss=stats.loss,
    )
    return len(update.encode())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    if args.quick:
        args.devices, args.budget = 5, 1.0
    cases = CASES[:2] if args.quick else CASES
    report: dict[str, Any] = {
        "benchmark": "compression",
        "command": " ".join(["python -m benchmarks.compression", *(argv or sys.argv[1:])]),
        "machine": f"{os.cpu_count()}-core {platform.machine()}, Python "
        f"{platform.python_version()} (virtual clock: load does not change the figures)",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "fleet": {"devices": args.devices, "budget_s": args.budget, "seed": args.seed},
        "runs": [],
    }
    for encoding, ef in cases:
        r = simulate(
            SimConfig(
                task="digits",
                devices=args.devices,
                partition="dirichlet:0.3",
                strategy="fedbuff",
                seed=args.seed,
                budget=args.budget,
                encoding=encoding,
                error_feedback=ef,
            )
        ).to_dict()
        report["runs"].append(
            {
                "encoding": encoding,
                "error_feedback": ef,
                "bytes_per_update": update_bytes(encoding, args.seed),
                "final_accuracy": r["test_accuracy"],
                "best_accuracy": r["best_accuracy"],
            }
        )
    base = report["runs"][0]
    for run in report["runs"]:
        run["bytes_ratio"] = round(run["bytes_per_update"] / base["bytes_per_update"], 3)
        run["accuracy_vs_f32"] = round(run["final_accuracy"] - base["final_accuracy"], 4)
    write_report(args.out_dir / "compression.json", report)
    if not args.quick:
        replace_section(Path("benchmarks/RESULTS.md"), "compression", table(report))
    print(json.dumps(report) if args.json else table(report))
    return report


def table(r: dict[str, Any]) -> str:
    f = r["fleet"]
    lines = [
        "## Compression: bytes per update and accuracy per encoding (simulate)",
        "",
        f"    {r['command']}",
        "",
        f"{r['date']}, {r['machine']}. digits, {f['devices']} devices, Dirichlet 0.3, "
        f"lognormal:0.05,1.0, seed {f['seed']}, FedBuff defaults with defences on, "
        f"{f['budget_s']:g} virtual s. f32 is the same-run baseline.",
        "",
        "| encoding | error feedback | bytes/update | ÷ f32 | final acc. | vs f32 | best |",
        "|---|---|---|---|---|---|---|",
    ]
    for x in r["runs"]:
        lines.append(
            f"| {x['encoding']} | {'on' if x['error_feedback'] else 'off'} | "
            f"{x['bytes_per_update']:,} | {x['bytes_ratio']} | {x['final_accuracy']:.4f} | "
            f"{x['accuracy_vs_f32']:+.4f} | {x['best_accuracy']:.4f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
