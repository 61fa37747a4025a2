"""What the virtual-clock benchmarks share: the fleet's flags, and writing the report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def fleet_parser(doc: str, *, budget: float, out: str) -> argparse.ArgumentParser:
    """A parser with the flags of the simulated fleet (the same defaults in each benchmark)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--partition", default="dirichlet:0.3")
    p.add_argument("--delays", default="lognormal:0.05,1.0")
    p.add_argument("--budget", type=float, default=budget)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(out))
    return p


def write_report(out: Path, report: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
