"""Malicious devices on the virtual clock: accuracy with and without defences.

    .venv/bin/python -m benchmarks.attacks [--fractions 0.1,0.2,0.3] [--encoding topk:0.1]
        [--out PATH.json]

FedBuff on digits with 50 devices; for each attack (``tools.sim.attacks.ATTACKS``) and each
fraction of malicious devices, one run with the default defences and one without, plus
the clean (0 %) run each way. Every run has the same seed, so the data split, delays and
the honest devices' training draws are the same; the malicious devices are chosen by
that seed too. The headline is each run's accuracy minus the clean run's, both measured
in this invocation.

Accuracy is the mean test accuracy over the evaluations in the last ``--tail`` fraction
of the budget (FedBuff's accuracy moves by about a point from one version to the next,
so one final evaluation is a noisy number); the final accuracy is recorded beside it.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.fleet import fleet_parser, write_report
from tools.sim.attacks import ATTACKS, WIRE_ATTACKS
from tools.sim.simulate import SimConfig, simulate


def _run(cfg: SimConfig, tail: float) -> dict[str, Any]:
    res = simulate(cfg)
    out = res.to_dict()
    start = cfg.budget * (1 - tail)
    # No version in the tail (a run the attack stalled): the accuracy it stalled at.
    window = [m for t, _, m in res.history if t >= start] or [res.history[-1][2]]
    out["tail_accuracy"] = round(sum(window) / len(window), 4)
    return out


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = fleet_parser(__doc__, budget=10.0, out="benchmarks/out/attacks.json")
    p.add_argument("--tail", type=float, default=0.2, help="fraction of the budget averaged")
    p.add_argument("--fractions", type=_floats, default=[0.1, 0.2, 0.3])
    # ridebound is measured on its own (RESULTS.md, "A careful attacker"): `--attacks ridebound`.
    p.add_argument("--attacks", default=",".join(WIRE_ATTACKS))
    p.add_argument("--defence-params", type=json.loads, default={}, help="JSON, for tuning")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--encoding", default="f32", help="the fleet's, attackers' included")
    args = p.parse_args(argv)
    attacks = args.attacks.split(",")
    base = dict(
        task="digits",
        devices=args.devices,
        partition=args.partition,
        delays=args.delays,
        strategy="fedbuff",
        seed=args.seed,
        budget=args.budget,
        encoding=args.encoding,
    )
    plan = [("none", 0.0, d) for d in (True, False)]
    plan += [(a, f, d) for a in attacks for f in args.fractions for d in (True, False)]
    configs = [
        SimConfig(
            **base,
            malicious=f,
            attack=a if f else "signflip",
            defence=d,
            strategy_params=args.defence_params if d else {},
        )
        for a, f, d in plan
    ]
    with ProcessPoolExecutor(args.workers) as pool:
        outs = list(pool.map(_run, configs, [args.tail] * len(configs)))
    clean = {d: out for (a, _, d), out in zip(plan, outs, strict=True) if a == "none"}
    rows = [_row(*run, r, clean) for run, r in zip(plan, outs, strict=True)]
    report = {
        "setup": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "strategy_params": {d: clean[d]["strategy_params"] for d in (True, False)},
        "split": "digits: stratified 80/20, split seed 0 (1437 train / 360 test)",
        "attacks": {a: ATTACKS[a] for a in attacks},
        "results": rows,
    }
    _print_table(rows)
    write_report(args.out, report)
    return report


def _row(
    attack: str, frac: float, defence: bool, r: dict[str, Any], clean: dict[bool, dict[str, Any]]
) -> dict[str, Any]:
    """One run's line of the report; ``clean`` holds the 0 % runs, with and without defence."""
    return {
        "attack": attack,
        "malicious": frac,
        "defence": defence,
        "malicious_devices": r["malicious_devices"],
        "accuracy": r["tail_accuracy"],
        "final_accuracy": r["test_accuracy"],
        "vs_clean": round(r["tail_accuracy"] - clean[defence]["tail_accuracy"], 4),
        "vs_clean_undefended": round(r["tail_accuracy"] - clean[False]["tail_accuracy"], 4),
        "malicious_applied": r["malicious_applied"],
        "malicious_rejected": sum(r["malicious_rejected_by_reason"].values()),
        "honest_rejected": r["updates_rejected"] - sum(r["malicious_rejected_by_reason"].values()),
        "rejected_by_reason": r["rejected_by_reason"],
        "versions": r["versions"],
        "wall_s": r["wall_s"],
    }


def _print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'attack':<10}{'mal.':>6}{'defence':>9}{'acc':>8}{'final':>8}{'Δclean':>8}"
        f"{'mal.appl':>10}{'mal.rej':>9}{'hon.rej':>9}"
    )
    for r in rows:
        print(
            f"{r['attack']:<10}{r['malicious']:>6.0%}{'on' if r['defence'] else 'off':>9}"
            f"{r['accuracy']:>8.4f}{r['final_accuracy']:>8.4f}{r['vs_clean']:>+8.4f}"
            f"{r['malicious_applied']:>10}{r['malicious_rejected']:>9}{r['honest_rejected']:>9}"
        )


if __name__ == "__main__":
    main()
