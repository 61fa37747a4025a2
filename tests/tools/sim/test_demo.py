"""``fedmq demo`` as a user runs it: the embedded broker by default, Mosquitto by URL."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

KEYS = {
    "task",
    "strategy",
    "devices",
    "broker",
    "versions",
    "updates_applied",
    "updates_rejected",
    "wall_s",
    "time_to_target_s",
    "bytes_up",
    "bytes_down",
    "onnx_path",
}


def _demo(*args: str, cwd) -> dict:
    cmd = [sys.executable, "-c", "from tools.entry import main; main()", "demo", "--json", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout)


def test_the_default_demo_reaches_its_target_over_the_embedded_broker(tmp_path):
    out = _demo("--out-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert KEYS | {"test_accuracy"} <= set(out)
    assert out["broker"].startswith("embedded mqtt://127.0.0.1:")
    assert (out["task"], out["strategy"], out["devices"]) == ("digits", "fedbuff", 20)
    assert out["time_to_target_s"] is not None and out["wall_s"] < 60
    assert out["target_met_by"]["metric"] >= 0.92 and out["target_met_by"]["version"] > 0
    assert out["test_accuracy"] >= 0.90
    assert out["updates_applied"] > 0 and out["bytes_up"] > 0 and out["bytes_down"] > 0
    assert (tmp_path / "run" / "aggregator" / "model.onnx").is_file()


@pytest.mark.broker
def test_the_seed_example_converges_over_mosquitto(mosquitto, fleet, tmp_path):
    out = _demo(
        "--task", "linreg", "--devices", "2", "--broker", mosquitto.url, "--fleet", fleet,
        "--out-dir", str(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert KEYS | {"w", "b", "loss"} <= set(out)
    assert out["broker"].startswith("external mqtt://")
    assert abs(out["w"] - 3) < 0.1 and abs(out["b"] - 2) < 0.1, out


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--devices", "0"], "--devices"),
        # It learns from each update's outcome at once, which only the simulator knows.
        (["--malicious", "0.2", "--attack", "ridebound"], "--attack"),
    ],
)
def test_a_bad_flag_is_one_line_not_a_traceback(tmp_path, args, named):
    cmd = [sys.executable, "-c", "from tools.entry import main; main()", "demo", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and named in proc.stderr


def test_malicious_devices_over_mqtt_are_held_off_by_the_defences(tmp_path):
    out = _demo(
        "--malicious", "0.2", "--attack", "signflip", "--target", "0.85", "--budget", "60",
        "--out-dir", str(tmp_path / "run"), cwd=tmp_path,
    )  # fmt: skip
    assert (out["malicious"], out["attack"], out["defence"]) == (0.2, "signflip", True)
    assert out["time_to_target_s"] is not None, out
    assert out["rejected_by_reason"].get("norm_bound", 0) > 0, out
