"""Running the aggregator as a daemon: config, the initial model, signals."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

from aggregator.config import AggregatorConfig
from aggregator.service import Aggregator
from aggregator.strategies import make_strategy
from fedmq.config import BROKER_FIELDS, BrokerConfig, layered, load_toml
from fedmq.data import load_dataset
from fedmq.errors import ConfigError, ModelError
from fedmq.model import Arch, init_weights
from fedmq.spec import parse_spec
from fedmq.training import Hyper

# name -> type; every one may come from the [aggregator] table, $FEDMQ_<NAME> or --<name>.
FIELDS: dict[str, type] = {
    **BROKER_FIELDS,
    "fleet": str,
    "model": str,
    "strategy": str,
    "eval": Path,
    "out_dir": Path,
    "publish_interval": float,
    "round_deadline": float,
    "seed": int,
    "defence": bool,
}
HYPER_FIELDS: dict[str, type] = {
    "lr": float,
    "epochs": int,
    "batch": int,
    "mu": float,
    "clip": float,
}
STRATEGY_FIELDS: dict[str, type] = {
    "alpha": float,
    "staleness": str,
    "max_staleness": int,
    "k": int,
    "server_lr": float,
    "clients_per_round": int,
    "norm_factor": float,
    "norm_mode": str,
    "trim": float,
}


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


def build(config: Path | None, flags: dict[str, Any]) -> Aggregator:
    """The daemon as configured by file < environment < flags."""
    file = load_toml(config) if config else {}

    def section(name: str) -> dict[str, Any]:
        table = file.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError("bad_toml", f"[{name}] must be a table")
        return table

    flags = {k: v for k, v in flags.items() if v is not None}
    s = layered(FIELDS, file=section("aggregator"), flags=flags)
    hyper = layered(HYPER_FIELDS, file=section("hyper"), flags=flags)
    params = layered(STRATEGY_FIELDS, file=section("strategy"), flags=flags, env={})
    for required in ("broker", "model"):
        if required not in s:
            raise ConfigError("missing_setting", f"{required} is not set (--{required})")
    arch = parse_arch(s["model"])
    broker = BrokerConfig.from_settings(s)
    strategy = make_strategy(
        s.get("strategy", "fedbuff"),
        init_weights(arch, s.get("seed", 0)),
        0,
        defence=s.get("defence", True),
        **params,
    )
    evalset = None
    if "eval" in s:
        task = "classification" if arch.is_classifier else "regression"
        evalset = load_dataset(s["eval"], task=task)
    cfg = AggregatorConfig(
        broker=broker,
        fleet=s.get("fleet", "default"),
        out_dir=s.get("out_dir", Path("fedmq-aggregator")),
        publish_interval=s.get("publish_interval", 0.2),
        round_deadline=s.get("round_deadline", 30.0),
    )
    return Aggregator(cfg, strategy, arch, Hyper(**hyper), evalset=evalset)


async def serve(agg: Aggregator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agg.run(stop)


def run(config: Path | None, flags: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(build(config, flags)))
