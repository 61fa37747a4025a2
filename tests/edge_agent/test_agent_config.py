"""The agent's settings: every one reachable from the file, the environment and a flag."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import SCHEMA, AgentConfig, load_agent_config
from edge_agent.main import parser

ALL_WAYS = [s for s in SCHEMA.settings if len(s.sources) == 3]
# `fedmq agent` on a Pi: an install without typer, so tools.entry hands over to edge_agent.main.
NO_TYPER = "import sys; sys.modules['typer'] = None; from tools.entry import main; main()"
MINIMAL = [sys.executable, "-c", NO_TYPER, "agent"]


def test_every_field_but_the_connection_is_a_declared_setting():
    fields = set(AgentConfig.__dataclass_fields__) - {"broker"}
    assert fields <= {s.name for s in SCHEMA.settings}


@pytest.mark.parametrize("s", ALL_WAYS, ids=lambda s: s.name)
def test_each_setting_is_reachable_three_ways(s, tmp_path, sample_value):
    value = sample_value(s)
    text = str(value).lower() if isinstance(value, bool) else str(value)
    literal = json.dumps(str(value) if isinstance(value, Path) else value)
    path = tmp_path / "a.toml"
    path.write_text(f"[agent]\n{s.name} = {literal}\n")
    for got, source in [
        (SCHEMA.resolve(path, env={})[s.name], "file"),
        (SCHEMA.resolve(env={s.env: text})[s.name], "env"),
        (SCHEMA.resolve(env={}, flags={s.name: text})[s.name], "flag"),
    ]:
        assert (got.value, got.source) == (value, source)
    # The typer-free command line derives the same flag from the declaration.
    argv = [f"--{'' if value else 'no-'}{s.flag[2:]}"] if s.type is bool else [s.flag, text]
    args = vars(parser().parse_args(argv))
    flags = {k: v for k, v in args.items() if k in SCHEMA.by_name}
    assert SCHEMA.resolve(env={}, flags=flags)[s.name].value == value


def test_load_agent_config_layers_the_sources(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text('[agent]\nbroker = "mqtt://127.0.0.1"\ndevice = "pi-1"\nkeepalive = 40\n')
    env = {"FEDMQ_DATA": "d.npz", "FEDMQ_KEEPALIVE": "50", "FEDMQ_ENCODING": "q8"}
    cfg = load_agent_config(path, env=env, flags={"encoding": "f16"})
    assert (cfg.device, cfg.keepalive, cfg.encoding, cfg.data) == ("pi-1", 50, "f16", Path("d.npz"))


def test_the_password_stays_out_of_the_agents_repr():
    env = {"FEDMQ_PASSWORD": "hunter2", "FEDMQ_DATA": "d.npz"}
    cfg = load_agent_config(flags={"broker": "mqtt://127.0.0.1", "device": "pi-1"}, env=env)
    assert cfg.broker.password == "hunter2" and "hunter2" not in repr(cfg)


def _minimal(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FEDMQ_")}
    return subprocess.run(
        [*MINIMAL, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=clean | env
    )


@pytest.mark.parametrize(
    ("toml", "env", "args", "needle"),
    [
        ("[agnet]\ndevice = 'x'\n", {}, [], "unknown table [agnet]"),
        ("[agent]\ndevise = 'x'\n", {}, [], "unknown key 'devise'"),
        ("", {"FEDMQ_KEEPALIVE": "abc"}, [], "$FEDMQ_KEEPALIVE must be an integer"),
        ("", {}, ["--keepalive", "abc"], "--keepalive must be an integer"),
        ("", {}, ["--password", "x"], "--password is not accepted"),
        ("", {}, ["--nope"], "unrecognized arguments: --nope"),
        ("", {}, ["--encoding", "topk:0"], "--encoding: topk:F needs a number F with 0 < F <= 1"),
        ("", {}, ["--encoding", "topk:2"], "got 'topk:2'"),
        ("", {}, ["--encoding", "topk:x"], "got 'topk:x'"),
        ("", {"FEDMQ_ENCODING": "f8"}, [], "$FEDMQ_ENCODING must be f32, f16, q8 or topk:F"),
        ("[agent]\nencoding = 'topk:1.5'\n", {}, [], "encoding in [agent] of a.toml: topk:F"),
    ],
)
def test_the_minimal_entry_reports_mistakes_in_one_line(tmp_path, toml, env, args, needle):
    (tmp_path / "a.toml").write_text(toml)
    proc = _minimal(["--config", "a.toml", *args], tmp_path, **env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr


def test_the_minimal_entry_prints_the_effective_config(tmp_path):
    (tmp_path / "a.toml").write_text("[agent]\nfleet = 'f1'\n")
    proc = _minimal(
        ["--config", "a.toml", "--device", "pi-1", "--print-config"],
        tmp_path,
        FEDMQ_SEED="7",
        FEDMQ_PASSWORD="hunter2",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["device"] == {"value": "pi-1", "source": "flag"}
    assert out["seed"] == {"value": 7, "source": "env"}
    assert out["fleet"] == {"value": "f1", "source": "file"}
    assert out["encoding"] == {"value": "f32", "source": "default"}
    assert out["password"]["value"] == "***" and "hunter2" not in proc.stdout
