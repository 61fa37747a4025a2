"""``fedmq aggregator`` and ``fedmq agent`` as separate processes, as a user runs them.

Their options are made from the declarations (tools/cli/agent.py, tools/cli/aggregator.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiomqtt
import pytest
from typer.testing import CliRunner

from edge_agent.config import SCHEMA as AGENT
from fedmq.config import BrokerConfig
from fedmq.topics import Topics
from fedmq.wire import AggregatorStatus
from tools.cli import app

FEDMQ = [sys.executable, "-c", "from tools.entry import main; main()"]


async def _accuracy_reaches(url: str, fleet: str, goal: float, timeout: float) -> AggregatorStatus:
    async def watch() -> AggregatorStatus:
        async with aiomqtt.Client(**BrokerConfig.from_url(url).client_kwargs()) as c:
            await c.subscribe(Topics(fleet).aggregator_status, qos=1)
            async for message in c.messages:
                status = AggregatorStatus.decode(bytes(message.payload))
                if status.last_accuracy is not None and status.last_accuracy >= goal:
                    return status
        raise AssertionError("the connection closed")

    return await asyncio.wait_for(watch(), timeout)


@pytest.mark.broker
async def test_daemon_and_agents_as_processes_learn_and_stop_cleanly(
    mosquitto, fleet, tmp_path, digits_files
):
    shards, evalset = digits_files(4)
    logs = [(tmp_path / f"{name}.log").open("wb") for name in ("agg", "a0", "a1", "a2", "a3")]
    common = ["--broker", mosquitto.url, "--fleet", fleet]
    agg = subprocess.Popen(
        [
            *FEDMQ,
            "aggregator",
            *common,
            "--model",
            "mlp:64,32,10",
            "--strategy",
            "fedasync",
            "--eval",
            str(evalset),
            "--out-dir",
            str(tmp_path / "agg"),
        ],
        stderr=logs[0],
    )
    agents = [
        subprocess.Popen(
            [
                *FEDMQ,
                "agent",
                *common,
                "--device",
                f"dev{i}",
                "--data",
                str(path),
                "--state-dir",
                str(tmp_path / f"state{i}"),
            ],
            stderr=logs[i + 1],
        )
        for i, path in enumerate(shards)
    ]
    procs = [agg, *agents]
    try:
        status = await _accuracy_reaches(mosquitto.url, fleet, 0.85, timeout=120)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.to_thread(proc.wait, 15) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for log in logs:
            log.close()
        errors = [Path(log.name).read_text() for log in logs]
    assert codes == [0] * len(procs), errors
    assert not any("Traceback" in e for e in errors), errors
    assert status.strategy == "fedasync" and status.accepted > 0
    history = [json.loads(x) for x in (tmp_path / "agg/history.jsonl").read_text().splitlines()]
    assert history[-1]["accuracy"] >= 0.85
    assert (tmp_path / "agg/model.onnx").is_file()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["aggregator", "--broker", "mqtt://127.0.0.1:1", "--model", "mlp:64"], "model"),
        (["aggregator", "--broker", "ftp://x", "--model", "mlp:4,2"], "ftp"),
        (["aggregator", "--model", "mlp:4,2"], "broker"),
        (["aggregator", "--broker", "mqtt://h", "--model", "mlp:4,2", "--strategy", "x"], "x"),
        (["agent", "--broker", "mqtt://h", "--device", "a/b", "--data", "x.npz"], "a/b"),
    ],
)
def test_bad_settings_are_one_clear_line(args, needle, tmp_path):
    proc = subprocess.run([*FEDMQ, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode not in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in proc.stderr


def _fedmq(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FEDMQ_")}
    return subprocess.run(
        [*FEDMQ, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=clean | env
    )


@pytest.mark.parametrize("command", ["agent", "aggregator"])
@pytest.mark.parametrize(
    ("toml", "env", "args", "needle"),
    [
        ("[agnet]\nk = 1\n", {}, [], "unknown table [agnet]"),
        ("[aggregator.strategy]\nk = 1\n[agent.x]\n", {}, [], "unknown table ["),
        ("[agent]\nkk = 1\n[aggregator]\nkk = 1\n", {}, [], "unknown key 'kk'"),
        ("", {"FEDMQ_KEEPALIVE": "abc"}, [], "$FEDMQ_KEEPALIVE must be an integer, got 'abc'"),
        ("", {}, ["--keepalive", "abc"], "--keepalive must be an integer"),
        ("", {}, ["--password", "hunter2"], "--password is not accepted"),
        ("[agent]\npassword = 'x'\n[aggregator]\npassword = 'x'\n", {}, [], "password cannot"),
    ],
)
def test_config_mistakes_are_one_line_and_exit_2(command, toml, env, args, needle, tmp_path):
    (tmp_path / "f.toml").write_text(toml)
    proc = _fedmq([command, "--config", "f.toml", *args, "--print-config"], tmp_path, **env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr
    assert "hunter2" not in proc.stderr


def test_fedmq_k_abc_is_refused(tmp_path):
    proc = _fedmq(["aggregator", "--print-config"], tmp_path, FEDMQ_K="abc")
    assert proc.returncode == 2 and "$FEDMQ_K must be an integer" in proc.stderr


def test_aggregator_print_config_names_each_source_and_masks_secrets(tmp_path):
    (tmp_path / "f.toml").write_text('[aggregator]\nmodel = "mlp:64,32,10"\nk = 5\n')
    args = ["aggregator", "--config", "f.toml", "--print-config", "--broker", "mqtt://127.0.0.1"]
    proc = _fedmq(args, tmp_path, FEDMQ_PUBLISH_INTERVAL="0.5", FEDMQ_PASSWORD="hunter2")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["broker"] == {"value": "mqtt://127.0.0.1", "source": "flag"}
    assert out["publish_interval"] == {"value": 0.5, "source": "env"}
    assert out["k"] == {"value": 5, "source": "file"}
    assert out["norm_factor"] == {"value": 4.0, "source": "default"}
    assert out["password"] == {"value": "***", "source": "env"}
    assert "hunter2" not in proc.stdout + proc.stderr


REQUIRED = {"agent": ["--device", "d", "--data", "x.npz"], "aggregator": ["--model", "mlp:4,2"]}


@pytest.mark.parametrize("command", ["agent", "aggregator"])
def test_a_password_over_plain_mqtt_to_another_host_is_refused(command, tmp_path):
    args = [command, "--broker", "mqtt://broker.example.org", *REQUIRED[command]]
    proc = _fedmq(args, tmp_path, FEDMQ_PASSWORD="hunter2")
    assert proc.returncode == 2, proc.stderr
    assert "refusing to send a password over plain mqtt://" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "hunter2" not in proc.stderr


@pytest.mark.parametrize("command", ["agent", "aggregator", "simulate", "demo"])
def test_every_help_has_an_example(command, tmp_path):
    proc = _fedmq([command, "--help"], tmp_path)
    assert proc.returncode == 0
    assert f"Example: fedmq {command} --" in proc.stdout


def test_every_agent_setting_is_a_typer_flag(sample_value):
    argv = []
    for s in AGENT.settings:
        if "flag" not in s.sources:
            continue
        value = sample_value(s)
        if s.type is bool:
            argv.append(f"--{'' if value else 'no-'}{s.flag[2:]}")
        else:
            argv += [s.flag, str(value)]
    res = CliRunner().invoke(app, ["agent", "--print-config", *argv], env={"FEDMQ_SEED": None})
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert {k for k, v in out.items() if v["source"] == "flag"} == {
        s.name for s in AGENT.settings if "flag" in s.sources
    }
    assert out["password"] == {"value": None, "source": "default"}
