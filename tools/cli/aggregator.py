"""``fedmq aggregator``: the server daemon, its options made from the declarations;
``fedmq aggregator status``: what it retains on the broker, for an operator."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from aggregator.config import AggregatorConfig, StrategyConfig
from fedmq.config import BrokerSettings
from fedmq.errors import ConfigError
from fedmq.logs import LogSettings
from fedmq.settings import refuse_password_flag
from fedmq.training import Hyper
from tools.cli.ops_common import FLEET, JSON, TIMEOUT, broker_config, print_json, snapshot, utc
from tools.cli.options import PASSWORD, with_settings

CONFIG = typer.Option(None, "--config", help="TOML file with an [aggregator] table.")
PRINT_CONFIG = typer.Option(
    False, "--print-config", help="Print the effective settings as JSON and exit."
)

# A group whose callback is the daemon: `fedmq aggregator --...` runs it as before, and
# `fedmq aggregator status` is a subcommand (the callback then does nothing).
aggregator_app = typer.Typer(invoke_without_command=True, no_args_is_help=False)


@with_settings(BrokerSettings, AggregatorConfig, StrategyConfig, Hyper, LogSettings)
def aggregator_command(
    ctx: typer.Context,
    config: Path = CONFIG,
    print_config: bool = PRINT_CONFIG,
    password: str = PASSWORD,
    settings: Any = None,
) -> None:
    """Run the aggregator daemon: validate updates, apply the strategy, publish the model.

    Every setting is also a key of the [aggregator] table and a FEDMQ_* variable
    (docs/config.md); a flag wins over the environment, which wins over the file. The
    password comes from --password-file or $FEDMQ_PASSWORD only. `fedmq aggregator
    status` shows a running aggregator.

    Example: `fedmq aggregator --broker mqtts://mqtt.example.org:8883 --ca ca.crt
    --username aggregator --password-file agg.pw --model mlp:64,32,10 --eval holdout.npz`
    """
    if ctx.invoked_subcommand is not None:
        given = [k for k, v in settings.items() if v is not None]
        if given or config is not None or print_config:
            raise ConfigError(
                "bad_flag", f"give the options after `{ctx.invoked_subcommand}`, not before it"
            )
        return
    from aggregator.main import run

    refuse_password_flag(password)
    run(config, settings, print_config=print_config)


@aggregator_app.command("status")
@with_settings(BrokerSettings)
def status_command(
    fleet: str = FLEET,
    json: bool = JSON,
    timeout: float = TIMEOUT,
    password: str = PASSWORD,
    settings: Any = None,
) -> None:
    """State, strategy and parameters, version, updates, devices per state, last evaluation.

    Example: `fedmq aggregator status --broker mqtt://127.0.0.1:1883 --fleet default --json`
    """
    snap, _ = snapshot(broker_config(settings, password), fleet, timeout)
    agg = snap.aggregator
    if agg is None:
        raise ConfigError("no_aggregator", f"no aggregator has published a status for {fleet!r}")
    doc = {
        "state": agg.state,
        "reason": agg.reason,
        "run": agg.run,
        "strategy": agg.strategy,
        "params": agg.params,
        "version": agg.version,
        "accepted": agg.accepted,
        "rejected": agg.rejected,
        "devices": snap.state_counts(),
        "last_evaluation": {"accuracy": agg.last_accuracy, "loss": agg.last_loss},
        "started_at": agg.started_at,
        "uptime": round(max(0.0, agg.at - agg.started_at), 1),
        "status_at": agg.at,
        "status_age": round(max(0.0, time.time() - agg.at), 1),
    }
    if json:
        print_json(doc)
        return
    for key, value in doc.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        elif key in ("started_at", "status_at"):
            value = utc(value)
        typer.echo(f"{key:>15}: {value}")


def register(app: typer.Typer) -> None:
    aggregator_app.callback()(aggregator_command)
    app.add_typer(aggregator_app, name="aggregator")
