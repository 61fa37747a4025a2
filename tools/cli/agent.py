"""``fedmq agent``: the device service, its options made from the agent's declarations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from edge_agent.config import AgentConfig
from fedmq.config import BrokerSettings
from fedmq.logs import LogSettings
from fedmq.settings import refuse_password_flag
from tools.cli.options import PASSWORD, with_settings

CONFIG = typer.Option(None, "--config", help="TOML file with an [agent] table.")
PRINT_CONFIG = typer.Option(
    False, "--print-config", help="Print the effective settings as JSON and exit."
)


@with_settings(BrokerSettings, AgentConfig, LogSettings)
def agent_command(
    config: Path = CONFIG,
    print_config: bool = PRINT_CONFIG,
    password: str = PASSWORD,
    settings: Any = None,
) -> None:
    """Run the edge agent: train on each new global model and publish the delta.

    Stops cleanly on SIGTERM or Ctrl-C, marking the device offline. Every setting is also
    a key of the [agent] table and a FEDMQ_* variable (docs/config.md); a flag wins over
    the environment, which wins over the file. The password comes from --password-file
    or $FEDMQ_PASSWORD only.

    Example: `fedmq agent --broker mqtts://mqtt.example.org:8883 --ca ca.crt --device pi-001
    --data local.csv --password-file pi-001.pw`
    """
    from edge_agent.main import run

    refuse_password_flag(password)
    run(config, settings, print_config=print_config)


def register(app: typer.Typer) -> None:
    app.command("agent")(agent_command)
