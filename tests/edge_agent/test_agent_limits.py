"""The agent's local limits: settable from file, environment and flags; checked."""

from __future__ import annotations

import pytest

from edge_agent.config import load_agent_config
from fedmq.errors import ConfigError

BASE = {"broker": "mqtt://127.0.0.1:1883", "device": "pi-1", "data": "local.csv"}


def test_limits_have_defaults_and_come_from_env_and_flags():
    cfg = load_agent_config(flags=BASE, env={})
    assert (cfg.max_epochs, cfg.max_batch, cfg.max_train_seconds) == (50, 1024, 300.0)
    env = {"FEDMQ_MAX_EPOCHS": "5", "FEDMQ_MAX_TRAIN_SECONDS": "2.5"}
    cfg = load_agent_config(flags={**BASE, "max_batch": 64}, env=env)
    assert (cfg.max_epochs, cfg.max_batch, cfg.max_train_seconds) == (5, 64, 2.5)


def test_limits_come_from_the_agent_table(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text("[agent]\nmax_epochs = 3\nmax_train_seconds = 10\n")
    cfg = load_agent_config(path, flags=BASE, env={})
    assert (cfg.max_epochs, cfg.max_train_seconds) == (3, 10.0)


@pytest.mark.parametrize(
    "bad",
    [
        {"max_epochs": 0},
        {"max_batch": -1},
        {"max_train_seconds": 0.0},
        {"max_train_seconds": float("nan")},
        {"max_train_seconds": float("inf")},
    ],
)
def test_limits_out_of_range_are_one_clear_error(bad):
    with pytest.raises(ConfigError) as info:
        load_agent_config(flags={**BASE, **bad}, env={})
    assert info.value.reason == "bad_setting" and next(iter(bad)) in info.value.message
