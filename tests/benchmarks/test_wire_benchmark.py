"""The wire benchmark (old name: compression) completes with --quick, valid JSON, no timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv", [["benchmarks", "compression"], ["benchmarks.compression"]])
def test_the_old_name_still_runs_the_wire_benchmark(argv, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", *argv, "--quick", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads((tmp_path / "wire.json").read_text())
    assert "| defences | encoding |" in out.stdout
    rows = report["rows"]
    assert rows[0]["encoding"] == "f32" and rows[0]["bytes_ratio"] == 1.0  # the baseline
    assert {r["encoding"] for r in rows} >= {"q8", "topk:0.1"}
    assert all(0 < r["bytes_ratio"] < 1.0 for r in rows[1:])
    assert all(0.0 <= r["final_accuracy"] <= 1.0 for r in rows)
    topk = next(r for r in rows if r["encoding"] == "topk:0.1")
    assert topk["bytes_ratio"] < 0.2 and "met" in topk["goal"]
