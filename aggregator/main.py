"""Running the aggregator as a daemon: config, the initial model, signals."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from aggregator.config import SCHEMA, AggregatorConfig, StrategyConfig, strategy_params
from aggregator.service import Aggregator
from aggregator.strategies import make_strategy
from fedmq.chunks import split
from fedmq.config import BrokerSettings
from fedmq.data import check_fits, load_dataset
from fedmq.errors import ConfigError, ModelError, WireError
from fedmq.logs import LogSettings
from fedmq.model import Arch, init_weights
from fedmq.schema import Schema
from fedmq.spec import parse_spec
from fedmq.training import Hyper
from fedmq.wire import GlobalModel, new_run


def parse_arch(spec: str, schema: Schema | None = None) -> Arch:
    """``mlp:64,32,10[:relu|tanh]`` or ``linear:IN,OUT``; with a schema, also the hidden
    widths alone (``mlp:32``, ``mlp:``-less ``linear``), the ends taken from the schema."""
    parsed = parse_spec(spec, int, tail=True)
    try:
        if parsed is None:
            raise ValueError("layer widths must be integers")
        widths = tuple(map(int, parsed.args))
        if schema is not None and _hidden_only(parsed.name, widths, schema):
            widths = (schema.n_features, *widths, schema.n_outputs)
        arch = Arch(parsed.name, widths, parsed.tail or "relu")
    except (ValueError, ModelError) as exc:
        raise ConfigError(
            "bad_model", f"bad model {spec!r} ({exc}): use mlp:64,32,10:relu or linear:1,1"
        ) from exc
    if schema is None:
        return arch
    try:
        return Arch(arch.kind, arch.layers, arch.activation, schema)
    except ModelError as exc:
        raise ConfigError("schema_mismatch", f"--model {spec!r}: {exc.message}") from exc


def _hidden_only(kind: str, widths: tuple[int, ...], schema: Schema) -> bool:
    """Hidden widths alone: not already from the schema's inputs to its outputs, and at
    most two (three or more widths are the full form, checked against the schema)."""
    if kind == "linear":
        return not widths
    full = len(widths) >= 2 and (widths[0], widths[-1]) == (schema.n_features, schema.n_outputs)
    return not full and 1 <= len(widths) <= 2


def build(
    config: Path | None, flags: dict[str, Any], env: dict[str, str] | None = None
) -> Aggregator:
    """The daemon as configured by flag > environment > file > default."""
    s = SCHEMA.resolve(config, flags=flags, env=env)
    s.require()
    cfg = s.build(AggregatorConfig, broker=s.build(BrokerSettings).connect())
    schema = Schema.load(cfg.schema) if cfg.schema is not None else None
    arch = parse_arch(s["model"].value, schema)  # a required setting: s.require() checked it
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
    if cfg.max_payload is not None:  # else the first publish would fail, not the start
        probe = GlobalModel.build(0, arch, strategy.weights, hyper, run=new_run()).encode()
        try:
            split(probe, "global_model", cfg.max_payload)
        except WireError as exc:
            raise ConfigError("bad_setting", f"--max-payload: the model's {exc.message}") from exc
    evalset = None
    if cfg.eval is not None:
        task = "classification" if arch.is_classifier else "regression"
        evalset = load_dataset(cfg.eval, task=task, schema=schema)
        where = f"--eval {cfg.eval}"
        check_fits(evalset, features=arch.n_inputs, task=task, outputs=arch.n_outputs, where=where)
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
