"""``fedmq aggregator``: the server daemon, its options made from the declarations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from aggregator.config import AggregatorConfig, StrategyConfig
from fedmq.config import BrokerSettings
from fedmq.settings import refuse_password_flag
from fedmq.training import Hyper
from tools.cli.options import PASSWORD, with_settings

CONFIG = typer.Option(None, "--config", help="TOML file with an [aggregator] table.")
PRINT_CONFIG = typer.Option(
    False, "--print-config", help="Print the effective settings as JSON and exit."
)


@with_settings(BrokerSettings, AggregatorConfig, StrategyConfig, Hyper)
def aggregator_command(
    config: Path = CONFIG,
    print_config: bool = PRINT_CONFIG,
    password: str = PASSWORD,
    settings: Any = None,
) -> None:
    """Run the aggregator daemon: validate updates, apply the strategy, publish the model.

    Every setting is also a key of the [aggregator] table and a FEDMQ_* variable
    (docs/config.md); a flag wins over the environment, which wins over the file. The
    password comes from --password-file or $FEDMQ_PASSWORD only.

    Example: `fedmq aggregator --broker mqtts://mqtt.example.org:8883 --ca ca.crt
    --username aggregator --password-file agg.pw --model mlp:64,32,10 --eval holdout.npz`
    """
    from aggregator.main import run

    refuse_password_flag(password)
    run(config, settings, print_config=print_config)


def register(app: typer.Typer) -> None:
    app.command("aggregator")(aggregator_command)
