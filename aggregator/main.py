"""Running the aggregator as a daemon: config, the initial model, signals."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from aggregator.config import SCHEMA, AggregatorConfig, StrategyConfig, strategy_params
from aggregator.service import Aggregator
from aggregator.strategies import make_strategy
from fedmq.config import BrokerSettings
from fedmq.data import load_dataset
from fedmq.errors import ConfigError, ModelError
from fedmq.logs import LogSettings
from fedmq.model import Arch, init_weights
from fedmq.spec import parse_spec
from fedmq.training import Hyper


def parse_arch(spec: str) -> Arch:
    """``mlp:64,32,10[:relu|tanh]`` or ``linear:IN,OUT``."""
    parsed = parse_spec(spec, int, tail=True)
    try:
        if parsed is None:
            raise ValueError("layer widths must be integers")
        return Arch(parsed.name, tuple(map(int, parsed.args)), parsed.tail or "relu")
    except (ValueError, ModelError) as exc:
        raise ConfigError(
            "bad_model", f"bad model {spec!r} ({exc}): use mlp:64,32,10:relu or linear:1,1"
        ) from exc


def build(
    config: Path | None, flags: dict[str, Any], env: dict[str, str] | None = None
) -> Aggregator:
    """The daemon as configured by flag > environment > file > default."""
    s = SCHEMA.resolve(config, flags=flags, env=env)
    s.require()
    cfg = s.build(AggregatorConfig, broker=s.build(BrokerSettings).connect())
    arch = parse_arch(s["model"].value)  # a required setting: s.require() checked it
    sc = s.build(StrategyConfig)
    strategy = make_strategy(
        sc.strategy,
        init_weights(arch, cfg.seed),
        0,
        defence=sc.defence,
        **strategy_params(sc.strategy, sc.defence, s.given(StrategyConfig)),
    )
    try:
        hyper = s.build(Hyper)
    except ModelError as exc:
        raise ConfigError("bad_setting", exc.message) from exc
    evalset = None
    if cfg.eval is not None:
        task = "classification" if arch.is_classifier else "regression"
        evalset = load_dataset(cfg.eval, task=task)
    return Aggregator(cfg, strategy, arch, hyper, evalset=evalset)


async def serve(agg: Aggregator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agg.run(stop)


def run(config: Path | None, flags: dict[str, Any], *, print_config: bool = False) -> None:
    """``fedmq aggregator``: print the effective settings, or run until stopped."""
    if print_config:
        print(SCHEMA.resolve(config, flags=flags).to_json())
        return
    logs = SCHEMA.resolve(config, flags=flags).build(LogSettings)
    agg = build(config, flags)
    logs.configure()
    asyncio.run(serve(agg))
