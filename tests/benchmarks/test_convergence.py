"""The convergence benchmark completes with --quick and emits valid JSON (not a timed test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.convergence import first_reach
from benchmarks.results import replace_section

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_emits_valid_json():
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.convergence", "--quick", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(out.stdout)
    assert report["benchmark"] == "convergence"
    assert 0.5 < report["centralized_accuracy"] <= 1.0
    labels = [r["label"] for r in report["runs"]]
    assert labels[0] == "FedAvg (sync)"  # the baseline is in every table
    for run in report["runs"]:
        assert run["curve"], run["label"]
        assert 0.0 <= run["final_accuracy"] <= 1.0
        assert run["updates_applied"] > 0


def test_time_to_goal_is_the_first_sample_at_or_above_it():
    curve = [(0.5, 0.8), (1.0, 0.91), (1.5, 0.89), (2.0, 0.96)]
    assert first_reach(curve, 0.90) == 1.0
    assert first_reach(curve, 0.95) == 2.0
    assert first_reach(curve, 0.99) is None


def test_a_section_is_replaced_in_place_and_appended_once(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Recorded results\n\nintro\n")
    replace_section(path, "convergence", "old\n")
    replace_section(path, "convergence", "new\n")
    text = path.read_text()
    assert text.count("<!-- convergence:start -->") == 1
    assert "new\n" in text and "old" not in text and "intro" in text
