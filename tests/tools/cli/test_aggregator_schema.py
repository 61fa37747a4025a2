"""``fedmq aggregator --schema``: the model spec from the schema, and each user mistake
around it, --eval and --out-dir as one line and a non-zero exit (run as a user runs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aggregator.main import parse_arch
from fedmq.errors import ConfigError
from fedmq.schema import Schema

FEDMQ = [sys.executable, "-c", "from tools.entry import main; main()"]
SCHEMA = Schema(("temp_c", "lux", "rpm"), "activity", "classification", ("idle", "run"))
# Nothing listens on port 1: every mistake below is found before the first connect.
AGG = ["aggregator", "--broker", "mqtt://127.0.0.1:1", "--status-interval", "0.2"]


def fedmq(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    return subprocess.run(
        [*FEDMQ, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=env
    )


@pytest.mark.parametrize(
    ("spec", "layers"),
    [
        ("mlp:32", (3, 32, 2)),
        ("mlp:32,16", (3, 32, 16, 2)),
        ("mlp:3,32,2", (3, 32, 2)),
        ("mlp:3,2", (3, 2)),
        ("mlp:32:tanh", (3, 32, 2)),
    ],
)
def test_with_a_schema_the_hidden_widths_are_enough(spec, layers):
    arch = parse_arch(spec, SCHEMA)
    assert arch.layers == layers and arch.schema == SCHEMA


def test_without_a_schema_hidden_widths_alone_are_refused():
    with pytest.raises(ConfigError):
        parse_arch("mlp:32")


@pytest.fixture
def files(tmp_path: Path) -> Path:
    SCHEMA.save(tmp_path / "schema.json")
    (tmp_path / "bad.json").write_text("{not json\n")
    (tmp_path / "two.csv").write_text("temp_c,lux,activity\n20,300,idle\n21,310,run\n")
    (tmp_path / "three.csv").write_text(
        "temp_c,lux,rpm,activity\n20,300,1,idle\n21,310,2,run\n22,320,3,sprint\n"
    )
    (tmp_path / "two_ints.csv").write_text("a,b,label\n1,2,0\n1,2,1\n")
    (tmp_path / "ints.csv").write_text("a,b,c,label\n1,2,3,0\n1,2,3,1\n1,2,3,2\n")
    (tmp_path / "afile").write_text("")
    return tmp_path


CASES = {
    # case: (arguments, exit status, what the one line says)
    "contradiction": (["--schema", "schema.json", "--model", "mlp:4,32,2"], 2, "4 inputs"),
    "contradiction_classes": (["--schema", "schema.json", "--model", "mlp:3,8,5"], 2, "2 classes"),
    "missing_schema": (["--schema", "nope.json", "--model", "mlp:32"], 5, "no such schema"),
    "unreadable_schema": (["--schema", ".", "--model", "mlp:32"], 5, "cannot read"),
    "bad_schema_json": (["--schema", "bad.json", "--model", "mlp:32"], 5, "not JSON"),
    "eval_feature_count": (["--model", "mlp:3,8,2", "--eval", "two_ints.csv"], 5, "2 feature"),
    "eval_more_classes": (["--model", "mlp:3,8,2", "--eval", "ints.csv"], 5, "not a class"),
    "eval_missing_column": (
        ["--schema", "schema.json", "--model", "mlp:32", "--eval", "two.csv"],
        5,
        "rpm",
    ),
    "eval_unknown_class": (
        ["--schema", "schema.json", "--model", "mlp:32", "--eval", "three.csv"],
        5,
        "sprint",
    ),
    "out_dir_is_a_file": (["--model", "mlp:3,8,2", "--out-dir", "afile"], 2, "is a file"),
    "out_dir_cannot_be_created": (
        ["--model", "mlp:3,8,2", "--out-dir", "afile/sub"],
        2,
        "cannot be created",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_mistake_is_one_line_and_a_non_zero_exit(case, files):
    args, code, needle = CASES[case]
    proc = fedmq(*AGG, *args, cwd=files)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("fedmq: error: "), proc.stderr
    assert needle in lines[0] and "Traceback" not in proc.stderr
