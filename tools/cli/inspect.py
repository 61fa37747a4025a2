"""``fedmq inspect TOPIC``: any fedmq topic, each payload decoded as one JSON line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

import typer

from fedmq.config import BrokerConfig, BrokerSettings
from fedmq.errors import ConfigError
from tools.cli.ops_common import TIMEOUT, broker_config
from tools.cli.options import PASSWORD, with_settings
from tools.ops.jsonify import payload_json
from tools.ops.retained import follow


async def _print(broker: BrokerConfig, topic: str, count: int | None, timeout: float) -> None:
    seen = 0
    async for name, payload in follow(broker, [topic], timeout=timeout):
        sys.stdout.write(json.dumps(payload_json(name, payload), default=str) + "\n")
        sys.stdout.flush()
        seen += 1
        if count is not None and seen >= count:
            return


@with_settings(BrokerSettings)
def inspect_command(
    topic: str = typer.Argument(..., help="A topic or filter, e.g. fl/default/devices/+/status."),
    count: int = typer.Option(None, "--count", help="Stop after this many messages."),
    json_: bool = typer.Option(
        True, "--json", help="One JSON object a line (the only output form)."
    ),
    timeout: float = TIMEOUT,
    password: str = PASSWORD,
    settings: Any = None,
) -> None:
    """Subscribe to a topic and print each payload decoded as JSON, one a line.

    Tensors are summarised as dtype, shape and norm. Retained messages come first.

    Example: `fedmq inspect 'fl/default/devices/+/status' --broker mqtt://127.0.0.1:1883 --count 5`
    """
    if count is not None and count < 1:
        raise ConfigError("bad_flag", f"--count must be >= 1, got {count}")
    if not topic.startswith("fl/"):
        raise ConfigError("bad_flag", f"{topic!r} is not a fedmq topic (they start with fl/)")
    broker = broker_config(settings, password)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_print(broker, topic, count, timeout))


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_command)
