"""``log_level``: declared once, a setting of both daemons, in each of its spellings."""

from __future__ import annotations

import json
import logging
import subprocess

import pytest

from aggregator.config import SCHEMA as AGGREGATOR
from edge_agent.config import SCHEMA as AGENT
from edge_agent.main import parser
from fedmq.errors import ConfigError
from fedmq.logs import LogSettings
from tests.conftest import FEDMQ


def test_both_daemons_take_the_one_declaration():
    assert AGENT.by_name["log_level"] is not None
    assert AGENT.by_name["log_level"] == AGGREGATOR.by_name["log_level"]
    assert AGENT.by_name["log_level"].section == "LogSettings"
    assert parser().parse_args(["--log-level", "debug"]).log_level == "debug"  # no typer


@pytest.mark.parametrize("command", ["agent", "aggregator"])
def test_log_level_by_flag_and_environment(command, tmp_path):
    required = {
        "agent": ["--data", "x.npz", "--device", "d"],
        "aggregator": ["--model", "linear:1,1"],
    }
    argv = [*FEDMQ, command, "--broker", "mqtt://127.0.0.1:1", *required[command], "--print-config"]
    flag = subprocess.run([*argv, "--log-level", "debug"], capture_output=True, text=True)
    assert json.loads(flag.stdout)["log_level"] == {"value": "debug", "source": "flag"}
    env = {"FEDMQ_LOG_LEVEL": "warning", "PATH": "/usr/bin:/bin"}
    by_env = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert json.loads(by_env.stdout)["log_level"] == {"value": "warning", "source": "env"}
    bad = subprocess.run([*argv, "--log-level", "loud"], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1
    assert "--log-level must be one of debug, info, warning, error" in bad.stderr


def test_configure_sets_the_level_and_a_bad_one_is_refused():
    root = logging.getLogger()
    before = root.level, list(root.handlers)
    try:
        LogSettings("warning").configure()
        assert root.level == logging.WARNING
        LogSettings("debug").configure()
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(before[0])
        root.handlers[:] = before[1]
    with pytest.raises(ConfigError):
        LogSettings("loud")
