"""The aggregator's settings: declared once, reachable three ways, one default each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from aggregator.config import SCHEMA, AggregatorConfig, StrategyConfig, strategy_params
from aggregator.main import build
from aggregator.strategies import make_strategy
from fedmq.errors import ConfigError
from fedmq.settings import settings_of
from fedmq.training import Hyper
from tools.cli import app

ALL_WAYS = [s for s in SCHEMA.settings if len(s.sources) == 3]
BASE = {"broker": "mqtt://127.0.0.1:1", "model": "mlp:4,3,2"}


def test_every_field_but_the_connection_is_a_declared_setting():
    for cls, skip in ((AggregatorConfig, {"broker"}), (StrategyConfig, set()), (Hyper, set())):
        fields = set(cls.__dataclass_fields__) - skip
        assert fields == {s.name for s in settings_of(cls)}, cls


def test_the_issue_s_missing_settings_are_declared():
    names = {s.name for s in ALL_WAYS}
    assert {"k", "trim", "durable", "checkpoint_every", "publish_interval"} <= names
    assert {"round_deadline", "alpha", "norm_factor", "max_staleness"} <= names


def _text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("s", ALL_WAYS, ids=lambda s: s.name)
def test_each_setting_is_reachable_from_file_env_and_the_typer_flag(s, tmp_path, sample_value):
    value = sample_value(s)
    literal = json.dumps(str(value) if isinstance(value, Path) else value)
    path = tmp_path / "a.toml"
    path.write_text(f"[aggregator]\n{s.name} = {literal}\n")
    assert (SCHEMA.resolve(path, env={})[s.name].value, "file") == (value, "file")
    got = SCHEMA.resolve(env={s.env: _text(value)})[s.name]
    assert (got.value, got.source) == (value, "env")
    argv = [f"--{'' if value else 'no-'}{s.flag[2:]}"] if s.type is bool else [s.flag, _text(value)]
    res = CliRunner().invoke(app, ["aggregator", "--print-config", *argv], env={s.env: None})
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)[s.name]
    expected = str(value) if isinstance(value, Path) else value
    assert shown == {"value": expected, "source": "flag"}


def test_build_carries_every_section_into_the_daemon(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text("[aggregator]\ncheckpoint_every = 7\ntrim = 0.1\nepochs = 3\n")
    env = {"FEDMQ_DURABLE": "yes", "FEDMQ_K": "4", "FEDMQ_LR": "0.2"}
    flags = BASE | {"out_dir": str(tmp_path / "agg"), "publish_interval": "0.5", "k": "3"}
    agg = build(path, flags | {"alpha": None}, env=env)  # None: not given
    assert (agg.cfg.checkpoint_every, agg.cfg.durable, agg.cfg.publish_interval) == (7, True, 0.5)
    params = agg.strategy.params()
    assert (params["k"], params["trim"], params["norm_factor"]) == (3, 0.1, 4.0)
    assert (agg.publisher.hyper.epochs, agg.publisher.hyper.lr) == (3, 0.2)
    agg.close()


def test_a_parameter_for_another_strategy_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="alpha applies to fedasync, not fedbuff"):
        build(None, BASE | {"alpha": "0.5", "out_dir": str(tmp_path)}, env={})
    with pytest.raises(ConfigError, match="trim only applies with defence on"):
        strategy_params("fedbuff", False, {"trim": 0.1})
    with pytest.raises(ConfigError, match="applies to fedbuff, not fedavg"):
        strategy_params("fedavg", True, {"trim": 0.1})
    assert strategy_params("fedasync", True, {"alpha": 0.5, "k": None}) == {"alpha": 0.5}


def test_bad_hyper_parameters_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="lr"):
        build(None, BASE | {"lr": "-1", "out_dir": str(tmp_path)}, env={})


def test_a_model_too_large_to_chunk_under_max_payload_is_refused_at_start(tmp_path):
    # 2,000 x 2,000 float32 weights need more than 4,096 chunks of 1,024 bytes.
    wide = BASE | {"model": "mlp:2000,2000,2", "max_payload": "1024", "out_dir": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"--max-payload: the model's .* more than 4096") as info:
        build(None, wide, env={})
    assert info.value.exit_code == 2 and "\n" not in info.value.message
    build(None, wide | {"max_payload": "131072"}, env={}).close()  # it fits in 128 KB chunks


def _w() -> dict[str, np.ndarray]:
    return {"w0": np.zeros(2, np.float32)}


@pytest.mark.parametrize("name", ["fedasync", "fedbuff", "fedavg"])
def test_the_strategies_defaults_are_the_declarations(name):
    params = make_strategy(name, _w(), defence=True).params()
    defaults = {s.name: s.default for s in settings_of(StrategyConfig)}
    shared = set(params) & set(defaults)
    assert {"norm_factor", "norm_mode", "norm_window", "norm_warmup"} <= shared
    assert {k: params[k] for k in shared} == {k: defaults[k] for k in shared}
