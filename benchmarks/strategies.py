"""Strategy comparison on the virtual clock: accuracy and time to target, vs FedAvg.

    .venv/bin/python -m benchmarks.strategies [--devices 50] [--out benchmarks/out/strategies.json]

Runs FedAsync, FedBuff and synchronous FedAvg on the same fleet (same seed, data split
and per-device delays) plus the same MLP trained centrally on the same split, prints a
table and writes JSON. Times are virtual seconds, so the figures do not depend on this
machine's speed; the ratio to FedAvg (measured in the same run) is the headline.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from tools.sim.simulate import SimConfig, simulate
from tools.sim.tasks import centralized_baseline, load_task

STRATEGIES = ("fedasync", "fedbuff", "fedavg")


def _run(cfg: SimConfig) -> dict[str, Any]:
    return simulate(cfg).to_dict()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--partition", default="dirichlet:0.3")
    p.add_argument("--delays", default="lognormal:0.05,1.0")
    p.add_argument("--budget", type=float, default=30.0)
    p.add_argument("--target", type=float, default=0.90)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/strategies.json"))
    args = p.parse_args(argv)
    configs = [
        SimConfig(
            task="digits",
            devices=args.devices,
            partition=args.partition,
            delays=args.delays,
            strategy=s,
            seed=args.seed,
            target=args.target,
            budget=args.budget,
        )
        for s in STRATEGIES
    ]
    with ProcessPoolExecutor() as pool:
        results = dict(zip(STRATEGIES, pool.map(_run, configs), strict=True))
    central = centralized_baseline(load_task("digits", seed=args.seed), seed=args.seed)
    rows = _rows(results)
    report = {
        "setup": {k: v for k, v in vars(args).items() if k != "out"},
        "split": "digits: stratified 80/20, split seed 0 (1437 train / 360 test)",
        "centralized_accuracy": round(central, 4),
        "centralized_setup": "64-32-10 relu MLP, 40 epochs, lr 0.05, batch 16, seed as above",
        "results": rows,
    }
    _print_table(rows)
    print(f"centralized {central:.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    base = results["fedavg"]["time_to_target_s"]
    rows = []
    for name, r in results.items():
        t = r["time_to_target_s"]
        ratio = None if t is None or base is None else round(t / base, 3)
        rows.append(
            {
                "strategy": name,
                "params": r["strategy_params"],
                "test_accuracy": r["test_accuracy"],
                "best_accuracy": r["best_accuracy"],
                "time_to_target_s": t,
                "ratio_to_fedavg": ratio,
                "versions": r["versions"],
                "updates_applied": r["updates_applied"],
                "updates_rejected": r["updates_rejected"],
                "wall_s": r["wall_s"],
            }
        )
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'strategy':<10}{'acc':>8}{'best':>8}{'t→target':>10}{'÷fedavg':>9}{'versions':>10}")
    for r in rows:
        t = "-" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.2f}s"
        ratio = "-" if r["ratio_to_fedavg"] is None else f"{r['ratio_to_fedavg']:.3f}"
        print(
            f"{r['strategy']:<10}{r['test_accuracy']:>8.4f}{r['best_accuracy']:>8.4f}"
            f"{t:>10}{ratio:>9}{r['versions']:>10}"
        )


if __name__ == "__main__":
    main()
