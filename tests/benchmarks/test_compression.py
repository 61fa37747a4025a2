"""The compression benchmark completes with --quick and emits valid JSON (not a timed test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_emits_valid_json():
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.compression", "--quick", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(out.stdout)
    runs = report["runs"]
    assert runs[0]["encoding"] == "f32" and runs[0]["bytes_ratio"] == 1.0  # the baseline
    assert all(0 < r["bytes_ratio"] <= 1.0 for r in runs)
    assert all(0.0 <= r["final_accuracy"] <= 1.0 for r in runs)
