"""Bytes per update and final accuracy per update encoding, with and without error feedback.

    .venv/bin/python -m benchmarks wire [--quick] [--json] [--seeds 0,1,2] [--workers 2]

Each case runs ``fedmq simulate`` (virtual clock, the real wire codec and Intake) on the
same fleet: digits (MLP 64-32-10, 2,410 parameters; the fixed stratified 80/20 split, 360
test images), 50 devices, Dirichlet 0.3, lognormal:0.05,1.0, FedBuff with its defaults,
for each seed. Two defence settings, each with its own f32 baseline in this run:
``defences`` is the default (norm bound and a coordinate-wise trimmed mean, trim 0.2);
``no-trim`` keeps the norm bound and combines FedBuff's buffer with the plain mean.
Bytes per update is what the intake received divided by the updates sent, over every
update of every seed. ``--quick`` runs a tiny fleet and leaves RESULTS.md alone.
``python -m benchmarks compression`` is the old name of this benchmark.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.fleet import write_report
from benchmarks.results import command_line, machine, write_section
from fedmq.model import init_weights
from fedmq.training import train_local
from fedmq.wire import Update
from tools.sim.simulate import SimConfig, simulate
from tools.sim.tasks import load_task

DEFENCES = {"defences": {}, "no-trim": {"trim": 0.0}}
# (defences, encoding, error feedback); the first case of each setting is its baseline.
CASES = [
    ("defences", "f32", False),
    ("defences", "f16", True),
    ("defences", "f16", False),
    ("defences", "q8", True),
    ("defences", "q8", False),
    ("defences", "topk:0.25", True),
    ("defences", "topk:0.1", True),
    ("defences", "topk:0.1", False),
    ("defences", "topk:0.05", True),
    ("no-trim", "f32", False),
    ("no-trim", "q8", True),
    ("no-trim", "topk:0.25", True),
    ("no-trim", "topk:0.1", True),
    ("no-trim", "topk:0.1", False),
    ("no-trim", "topk:0.05", True),
    ("no-trim", "topk:0.05", False),
]
QUICK = [("defences", "f32", False), ("defences", "q8", True), ("defences", "topk:0.1", True)]
# The goals: (bytes ratio at most, accuracy loss at most), error feedback on.
GOALS = {"q8": (0.26, 0.005), "topk:0.1": (0.15, 0.01)}
TAIL = 0.2  # the last fifth of the budget: the mean accuracy there is a steadier figure


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/out"))
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--budget", type=float, default=15.0, help="virtual seconds per run")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; each case runs all")
    p.add_argument("--workers", type=int, default=2)
    return p


def run_one(defence: str, encoding: str, ef: bool, seed: int, devices: int, budget: float):
    """One simulation: final, best and tail accuracy, bytes per update sent."""
    cfg = SimConfig(
        task="digits",
        devices=devices,
        partition="dirichlet:0.3",
        strategy="fedbuff",
        strategy_params=DEFENCES[defence],
        seed=seed,
        budget=budget,
        encoding=encoding,
        error_feedback=ef,
    )
    res = simulate(cfg)
    out = res.to_dict()
    tail = [m for t, _, m in res.history if t >= budget * (1 - TAIL)]
    sent = out["updates_applied"] + out["updates_rejected"]
    return {
        "seed": seed,
        "final": out["test_accuracy"],
        "best": out["best_accuracy"],
        "tail": round(sum(tail) / len(tail), 4),
        "time_to_090": out["time_to_target_s"],
        "bytes_in": out["bytes_in"],
        "updates_sent": sent,
        "rejected": out["rejected_by_reason"],
    }


def framing(encoding: str, seed: int = 0) -> dict[str, int]:
    """One real update's bytes split into tensor data and everything else (the framing)."""
    task = load_task("digits", seed=seed)
    x, y = task.train.x[:30], task.train.y[:30]
    rng = np.random.default_rng(seed)
    delta, stats = train_local(task.arch, init_weights(task.arch, seed), x, y, task.hyper, rng)
    u = Update.from_delta(
        delta, encoding=encoding, device="sim-0000", seq=0, base_version=0,
        num_samples=len(x), steps=stats.steps, loss=None,
    )  # fmt: skip
    data = sum(a.nbytes for a in (*u.delta.values(), *u.indices.values()))
    total = len(u.encode())
    return {"total": total, "tensor_data": data, "framing": total - data}


def summarise(case: tuple[str, str, bool], runs: list[dict[str, Any]]) -> dict[str, Any]:
    defence, encoding, ef = case
    finals = [r["final"] for r in runs]
    hit = [r["time_to_090"] for r in runs if r["time_to_090"] is not None]
    return {
        "defences": defence,
        "encoding": encoding,
        "error_feedback": ef,
        "bytes_per_update": round(
            sum(r["bytes_in"] for r in runs) / sum(r["updates_sent"] for r in runs), 1
        ),
        "final_accuracy": round(statistics.mean(finals), 4),
        "final_min": min(finals),
        "final_max": max(finals),
        "tail_accuracy": round(statistics.mean(r["tail"] for r in runs), 4),
        "best_accuracy": round(statistics.mean(r["best"] for r in runs), 4),
        "time_to_090_s": round(statistics.mean(hit), 3) if len(hit) == len(runs) else None,
        "framing": framing(encoding),
        "runs": runs,
    }


def judge(rows: list[dict[str, Any]]) -> None:
    """Each row against its own setting's f32 row; goal verdicts where the issue sets one."""
    base = {r["defences"]: r for r in rows if r["encoding"] == "f32"}
    for r in rows:
        b = base[r["defences"]]
        r["bytes_ratio"] = round(r["bytes_per_update"] / b["bytes_per_update"], 3)
        r["accuracy_vs_f32"] = round(r["final_accuracy"] - b["final_accuracy"], 4)
        goal = GOALS.get(r["encoding"]) if r["error_feedback"] else None
        if goal is not None:
            r["goal"] = {
                "bytes_ratio_max": goal[0],
                "accuracy_loss_max": goal[1],
                "met": r["bytes_ratio"] <= goal[0] and -r["accuracy_vs_f32"] <= goal[1],
            }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    cases, seeds = CASES, [int(s) for s in args.seeds.split(",") if s]
    if args.quick:
        args.devices, args.budget, cases, seeds = 5, 1.0, QUICK, seeds[:1]
    report: dict[str, Any] = {
        "benchmark": "wire",
        "command": command_line("wire", argv),
        "machine": machine(),
        "started_at": time.time(),
        "fleet": {"devices": args.devices, "budget_s": args.budget, "seeds": seeds},
    }
    jobs = [(*c, s, args.devices, args.budget) for c in cases for s in seeds]
    with ProcessPoolExecutor(args.workers) as pool:
        done = list(pool.map(run_one, *zip(*jobs, strict=True)))
    rows = [summarise(c, done[i * len(seeds) : (i + 1) * len(seeds)]) for i, c in enumerate(cases)]
    judge(rows)
    report["rows"] = rows
    write_report(args.out_dir / "wire.json", report)
    if not args.quick:
        write_section("wire", TITLE, report["command"], table(report), report)
    print(table(report))
    return report


TITLE = "Wire: bytes per update and accuracy per encoding (simulate)"


def table(r: dict[str, Any]) -> str:
    f = r["fleet"]
    lines = [
        f"digits (2,410 parameters; fixed 80/20 split, 360 test images), {f['devices']} "
        f"devices, Dirichlet 0.3, lognormal:0.05,1.0, FedBuff defaults, {f['budget_s']:g} "
        f"virtual s, seeds {', '.join(map(str, f['seeds']))} (accuracy: mean over the "
        "seeds, final min–max beside it; tail: mean over the last fifth of the budget). "
        "Each setting's f32 row is its baseline in this run. `defences`: norm bound and "
        "trimmed mean (trim 0.2); `no-trim`: norm bound, plain mean.",
        "",
        "| defences | encoding | EF | bytes/update | ÷ f32 | framing | final acc. (min–max) "
        "| vs f32 | tail | t→0.90 s | goal |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        goal = x.get("goal")
        verdict = "" if goal is None else ("met" if goal["met"] else "**not met**")
        t90 = "–" if x["time_to_090_s"] is None else f"{x['time_to_090_s']:.2f}"
        lines.append(
            f"| {x['defences']} | {x['encoding']} | {'on' if x['error_feedback'] else 'off'} | "
            f"{x['bytes_per_update']:,.0f} | {x['bytes_ratio']:.3f} | {x['framing']['framing']} | "
            f"{x['final_accuracy']:.4f} ({x['final_min']:.4f}–{x['final_max']:.4f}) | "
            f"{100 * x['accuracy_vs_f32']:+.2f} pt | {x['tail_accuracy']:.4f} | {t90} | {verdict} |"
        )
    return "\n".join(lines + notes(r["rows"])) + "\n"


def notes(rows: list[dict[str, Any]]) -> list[str]:
    """Why the goals come out as they do, in this run's own numbers."""
    by = {(x["defences"], x["encoding"], x["error_feedback"]): x for x in rows}
    f32, q8 = by.get(("defences", "f32", False)), by.get(("defences", "q8", True))
    out = ["Framing: bytes/update of one real update minus its tensor data (v1 field names "]
    out[-1] += "and values, tensor headers, q8's scales)."
    if f32 and q8:
        fd, qd = f32["framing"], q8["framing"]
        floor = (qd["tensor_data"] + fd["framing"]) / fd["total"]
        room = (GOALS["q8"][0] * fd["tensor_data"] - qd["tensor_data"]) / (1 - GOALS["q8"][0])
        out.append(
            f"q8 against ≤ {GOALS['q8'][0]}: {qd['tensor_data']:,} bytes of int8 data plus "
            f"{qd['framing']} of framing, {qd['framing'] - fd['framing']} of them the float64 "
            f"scales. With scales free it would still be ({qd['tensor_data']:,} + "
            f"{fd['framing']}) / {fd['total']:,} = {floor:.3f}: at 2,410 parameters the goal "
            f"needs at most {room:.0f} bytes of framing per update, which v1's own field names "
            "and tensor headers exceed (shortening them is a wire v2). The ratio tends to "
            "0.25 as the model grows (the codec gives 0.2505 for the 784-128-10 MLP of "
            "`throughput`)."
        )
    out.append(
        "topk under the trimmed mean: a sparse delta votes only on the coordinates it "
        "sent (`aggregator/strategies/trimmed.py`): per coordinate the trim cuts "
        "floor(trim · m) of the m buffered deltas that sent it. Until 2026-12-03 an unsent "
        "coordinate counted as a vote for 0, so the trim cut the one or two devices that "
        "did send it as extremes, and error feedback could not put it back: topk:0.1 with "
        "error feedback was 0.9166 under the defences, -3.43 pt against f32 (same seeds "
        "and budget)."
    )
    return [line for note in out for line in ("", note)]


if __name__ == "__main__":
    main()
