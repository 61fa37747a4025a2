"""Every registered benchmark runs with --quick and emits valid JSON (no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.__main__ import BENCHMARKS

BROKER = {"throughput", "footprint", "ledger", "convergence", "scale"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.broker] if n in BROKER else []) for n in BENCHMARKS]
)
def test_each_benchmark_completes_quickly_with_valid_json(name, tmp_path):
    argv = [
        sys.executable,
        "-m",
        "benchmarks",
        name,
        "--quick",
        "--json",
        "--out-dir",
        str(tmp_path),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout)
    assert printed == json.loads((tmp_path / f"{name}.json").read_text())
    assert printed  # a report, not an empty object


def test_an_unknown_benchmark_is_one_line_and_a_nonzero_exit():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "nope"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("fedmq: error: unknown benchmark 'nope'")
