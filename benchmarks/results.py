"""What every benchmark shares: the machine it ran on, its JSON, its RESULTS.md section.

A section of ``benchmarks/RESULTS.md`` written by a benchmark sits between
``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``; a new run replaces it and leaves the
rest of the file (hand-written sections included) alone.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out"
RESULTS = ROOT / "RESULTS.md"


def machine() -> dict[str, Any]:
    """Where the figures come from: they only compare within one run on one machine."""
    import numpy as np

    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if Path(mosquitto).exists():
        out = subprocess.run([mosquitto, "-h"], capture_output=True, text=True).stdout
        found = re.search(r"version (\S+)", out)
        info["mosquitto"] = found.group(1) if found else "?"
    return info


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max: the machine is shared, so one figure alone means little."""
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "n": len(values),
    }


def fmt(s: dict[str, float], digits: int = 0) -> str:
    """``median (min-max)``."""
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}-{s['max']:,.{digits}f})"


def write_json(name: str, report: dict[str, Any], out_dir: Path | None = None) -> Path:
    path = (out_dir or OUT) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def write_section(name: str, title: str, command: str, body: str, report: dict[str, Any]) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md."""
    m = report["machine"]
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(report["started_at"]))
    where = (
        f"{date}; {m['cpus']} CPUs ({m['platform']}), Python {m['python']}, NumPy {m['numpy']}"
        + (f", Mosquitto {m['mosquitto']}" if "mosquitto" in m else "")
        + f"; load average at start {m['load_avg'][0]}."
    )
    section = (
        f"<!-- bench:{name} -->\n## {title}\n\n    {command}\n\n{where}\n\n{body.strip()}\n"
        f"<!-- /bench:{name} -->"
    )
    text = RESULTS.read_text(encoding="utf-8")
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text, encoding="utf-8")


def command_line(name: str, argv: Sequence[str]) -> str:
    return " ".join([".venv/bin/python -m benchmarks", name, *argv])


def python() -> str:
    return sys.executable


def replace_section(path: Path, name: str, body: str) -> None:
    """Put ``body`` between this benchmark's markers, appending them the first time."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Recorded results\n"
    block = f"{start}\n{body}{end}\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)
