"""What the operator commands (fleet, model, inspect, aggregator status) share.

They take exactly the broker settings the services take (``BrokerSettings``, options
made by ``with_settings``), a ``--fleet`` and a connect ``--timeout``; they read only
what the broker retains, never the aggregator's disk.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import typer

from fedmq.config import BrokerConfig, BrokerSettings
from fedmq.errors import ConfigError
from fedmq.settings import Schema, refuse_password_flag
from fedmq.topics import Topics
from tools.ops.fleet import FleetSnapshot, filters
from tools.ops.retained import read_retained

# The table only names where a config file's keys would live; these commands read none.
BROKER_SCHEMA = Schema("agent", BrokerSettings)

FLEET = typer.Option("default", "--fleet", help="Fleet name: its topics live under fl/FLEET/.")
TIMEOUT = typer.Option(5.0, "--timeout", help="Seconds to wait for the broker to connect.")
JSON = typer.Option(False, "--json", help="Print one JSON document and nothing else.")


def utc(at: float) -> str:
    """A wire timestamp as the operator reads it: ISO 8601 in UTC, to the second."""
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")


def broker_config(settings: dict[str, Any], password: str | None) -> BrokerConfig:
    """The connection from flags > ``$FEDMQ_*`` (no config file), or one clear error."""
    refuse_password_flag(password)
    resolved = BROKER_SCHEMA.resolve(None, flags=settings)
    resolved.require()
    return resolved.build(BrokerSettings).connect()


def topics(fleet: str) -> Topics:
    try:
        return Topics(fleet)
    except ValueError as exc:  # TopicError is a ValueError
        raise ConfigError("bad_flag", f"--fleet: {exc}") from exc


def retained(broker: BrokerConfig, wanted: Sequence[str], timeout: float) -> dict[str, bytes]:
    if not timeout > 0:
        raise ConfigError("bad_flag", f"--timeout must be > 0, got {timeout:g}")
    return asyncio.run(read_retained(broker, wanted, timeout=timeout))


def snapshot(
    broker: BrokerConfig, fleet: str, timeout: float, extra: Sequence[str] = ()
) -> tuple[FleetSnapshot, dict[str, bytes]]:
    """The fleet's decoded retained state, and the raw messages (for the ONNX model)."""
    t = topics(fleet)
    raw = retained(broker, [*filters(t), *extra], timeout)
    return FleetSnapshot.from_retained(fleet, raw), raw


def print_json(doc: Any, indent: int | None = 2) -> None:
    """One JSON document on stdout (``indent`` None: on one line, for a stream of them)."""
    json.dump(doc, sys.stdout, indent=indent, sort_keys=False, default=str)
    sys.stdout.write("\n")
