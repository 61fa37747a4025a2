"""``fedmq data schema`` and ``fedmq data inspect``, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedmq.schema import Schema

FEDMQ = [sys.executable, "-c", "from tools.entry import main; main()"]
READINGS = (
    "temp_c,activity,pressure_pa\n20.5,walking,101325\n19,idle,\n21,running,99000\n22,idle,99100\n"
)


def fedmq(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    return subprocess.run(
        [*FEDMQ, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=env
    )


@pytest.fixture
def readings(tmp_path: Path) -> Path:
    path = tmp_path / "readings.csv"
    path.write_text(READINGS)
    return path


def test_schema_prints_the_schema_json(readings, tmp_path):
    proc = fedmq("data", "schema", str(readings), "--label", "activity", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    schema = Schema.from_dict(json.loads(proc.stdout))
    assert schema.features == ("temp_c", "pressure_pa") and schema.label == "activity"
    assert schema.task == "classification" and schema.classes == ("idle", "running", "walking")


def test_schema_out_writes_the_file_and_says_so_in_one_line(readings, tmp_path):
    out = tmp_path / "schema.json"
    proc = fedmq(
        "data", "schema", "readings.csv", "--label", "temp_c", "--task", "regression",
        "--out", "schema.json", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0 and "activity" in proc.stderr  # a text feature
    assert not out.exists()
    proc = fedmq(
        "data", "schema", "readings.csv", "--label", "activity", "--out", "schema.json",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1 and "schema.json" in proc.stdout
    assert Schema.load(out).classes == ("idle", "running", "walking")


def test_inspect_shows_types_ranges_missing_and_class_counts(readings, tmp_path):
    proc = fedmq("data", "inspect", str(readings), "--label", "activity", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "4 rows, 3 columns" in lines[0]
    pressure = next(line for line in lines if line.startswith("pressure_pa"))
    assert pressure.split() == ["pressure_pa", "number", "99000", "101325", "1"]
    assert "idle: 2, running: 1, walking: 1" in lines[-1]


def test_inspect_json(readings, tmp_path):
    proc = fedmq("data", "inspect", str(readings), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert [c["type"] for c in info["columns"]] == ["number", "text", "number"]
    assert info["columns"][0]["min"] == 19 and "classes" not in info


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["data", "schema", "nope.csv", "--label", "y"], "no such file"),
        (["data", "schema", "readings.csv", "--label", "y"], "'y' not found"),
        (["data", "schema", "readings.csv", "--label", "temp_c"], "must be numbers"),
        (["data", "schema", "bad.csv", "--label", "y"], "not UTF-8"),
        (["data", "schema", "readings.csv", "--label", "activity", "--out", "."], "directory"),
        (["data", "schema", "readings.csv", "--label", "activity", "--out", "no/s.json"], "no"),
        (["data", "inspect", "readings.csv", "--label", "y"], "'y' not found"),
        (["data", "inspect", "."], "not a regular file"),
    ],
)
def test_user_mistakes_are_one_line_and_a_non_zero_exit(readings, tmp_path, args, needle):
    (tmp_path / "bad.csv").write_bytes(b"a,y\n\xff,1\n")
    proc = fedmq(*args, cwd=tmp_path)
    assert proc.returncode not in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("fedmq: error: ") and len(proc.stderr.splitlines()) == 1
    assert needle in proc.stderr


@pytest.mark.parametrize("command", [["data"], ["data", "schema"], ["data", "inspect"]])
def test_every_help_has_an_example(tmp_path, command):
    proc = fedmq(*command, "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "Example: fedmq data" in proc.stdout
