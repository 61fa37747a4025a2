"""One entry point for the benchmarks: ``python -m benchmarks NAME [--quick] [--json]``.

Each benchmark is a module of this package with ``main(argv)`` returning its report; it
writes the report as JSON to ``benchmarks/out/NAME.json`` (``--out-dir DIR`` elsewhere)
and, when it has a section there, its table with the command, machine, date and the
baseline of the same run to ``benchmarks/RESULTS.md``. ``--quick`` is a smoke run
(seconds, not minutes) that never touches RESULTS.md; ``--json`` prints the report on
stdout and everything else on stderr. ``python -m benchmarks`` lists them.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from pathlib import Path
from typing import Any

# name -> one line; the module benchmarks.<name> has main(argv).
BENCHMARKS: dict[str, str] = {
    "throughput": "intake rate against a bare MQTT subscriber on the same stream",
    "intake": "the intake alone, with the ledger against without it (what the ledger costs)",
    "footprint": "the agent's peak RSS, import time and installed size",
    "ledger": "ledger bytes on disk per applied update under a real fleet",
    "strategies": "FedAsync, FedBuff and FedAvg on the virtual clock",
    "attacks": "malicious devices against the defences",
    "fuzz": "hostile payloads at the aggregator's front door",
    "convergence": "time to 0.90/0.95 over MQTT in wall time, per strategy, with sync FedAvg",
    "privacy": "accuracy against DP ε for noise multipliers 0, 0.5, 1, 2 (simulate)",
    "scale": "N devices over worker processes against a real aggregator: downlink, CPU, RSS",
    "wire": "bytes per update and final accuracy per encoding (f32, f16, q8, topk), error feedback",
}
# Old names that still run their benchmark (not listed, not smoke-tested twice).
ALIASES = {"compression": "wire"}
# Benchmarks older than this entry point: what --quick means for them, and their own
# --out FILE in place of --out-dir.
QUICK = {
    "ledger": ["--minutes", "0.25", "--devices", "4"],
    "strategies": ["--budget", "1", "--devices", "10"],
    "attacks": [
        "--budget",
        "1",
        "--devices",
        "10",
        "--fractions",
        "0.2",
        "--attacks",
        "signflip",
        "--workers",
        "2",
    ],
    "fuzz": ["--cases", "300"],
}


def _argv(name: str, rest: list[str]) -> list[str]:
    if name not in QUICK:
        return rest
    out: list[str] = []
    args = iter(rest)
    for arg in args:
        if arg == "--quick":
            out += QUICK[name]
        elif arg == "--out-dir":
            out += ["--out", str(Path(next(args)) / f"{name}.json")]
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0] + "\n")
        for name, what in BENCHMARKS.items():
            print(f"  {name:<12} {what}")
        return 0
    name, rest = ALIASES.get(args[0], args[0]), args[1:]
    if name not in BENCHMARKS:
        print(
            f"fedmq: error: unknown benchmark {name!r}: use one of {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    as_json = "--json" in rest
    rest = _argv(name, [a for a in rest if a != "--json"])
    run = importlib.import_module(f"benchmarks.{name}").main
    report: Any
    if as_json:
        with contextlib.redirect_stdout(sys.stderr):
            report = run(rest)
        print(json.dumps(report, indent=2))
    else:
        run(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
