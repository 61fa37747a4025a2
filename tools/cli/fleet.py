"""``fedmq fleet ls|show|watch``: the devices of a fleet, from what the broker retains."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any

import typer

from fedmq.config import BrokerConfig, BrokerSettings
from fedmq.errors import ConfigError
from tools.cli.ops_common import (
    FLEET,
    JSON,
    TIMEOUT,
    broker_config,
    print_json,
    snapshot,
    topics,
    utc,
)
from tools.cli.options import PASSWORD, with_settings
from tools.ops.fleet import COLUMNS, STATES, FleetSnapshot, filters, select
from tools.ops.jsonify import plain
from tools.ops.retained import follow

fleet_app = typer.Typer(
    help="The devices of a fleet: state, version held, staleness, contributions.\n\n"
    "Example: `fedmq fleet ls --broker mqtt://127.0.0.1:1883 --fleet default`",
    no_args_is_help=True,
)

STATE = typer.Option(None, "--state", help=f"Only devices in this state: {', '.join(STATES)}.")
STALE_OVER = typer.Option(
    None, "--stale-over", help="Only devices more than N versions behind the current model."
)
SORT = typer.Option("device", "--sort", help=f"Sort by one column: {', '.join(COLUMNS)}.")
# Row keys ``fleet show`` lists under its headline (the rest are in the headline).
ROW_DETAIL = ("updates_sent", "accepted", "rejected", "samples", "last_loss", "agent_version")
ROW_DETAIL += ("error", "epsilon")
STYLE = {"online": "green", "training": "cyan", "idle": "blue", "error": "red", "offline": "dim"}


def _ago(at: float | None, now: float) -> str:
    if at is None:
        return "-"
    seconds = max(0.0, now - at)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    return f"{seconds / 60:.0f}m ago" if seconds < 7200 else f"{seconds / 3600:.0f}h ago"


def _cell(column: str, value: Any, now: float) -> str:
    if column == "last_seen":
        return _ago(value, now)
    if column == "state":
        return f"[{STYLE.get(value, '')}]{value}[/]"
    if isinstance(value, dict):
        return ", ".join(f"{k}:{v}" for k, v in sorted(value.items())) or "0"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def table(rows: list[dict[str, Any]], snap: FleetSnapshot, now: float | None = None) -> Any:
    """The rich table ``ls`` prints and ``watch`` redraws."""
    from rich.table import Table

    now = time.time() if now is None else now
    version = "-" if snap.version is None else f"v{snap.version}"
    agg = "no aggregator" if snap.aggregator is None else f"aggregator {snap.aggregator.state}"
    out = Table(title=f"{len(rows)} devices · model {version} · {agg}", title_justify="left")
    # The ε column only says something when DP is on.
    columns = [c for c in COLUMNS if c != "epsilon" or any(r[c] is not None for r in rows)]
    for c in columns:
        out.add_column(c, justify="right" if c not in ("device", "state", "error") else "left")
    for row in rows:
        out.add_row(*(_cell(c, row[c], now) for c in columns))
    return out


def _rows(snap: FleetSnapshot, state: str | None, stale_over: int | None, sort: str) -> list:
    if stale_over is not None and stale_over < 0:
        raise ConfigError("bad_flag", f"--stale-over must be >= 0, got {stale_over}")
    return select(snap.rows(), state=state, stale_over=stale_over, sort=sort)


@fleet_app.command("ls")
@with_settings(BrokerSettings)
def ls_command(
    fleet: str = FLEET,
    state: str = STATE,
    stale_over: int = STALE_OVER,
    sort: str = SORT,
    json: bool = JSON,
    timeout: float = TIMEOUT,
    password: str = PASSWORD,
    settings: Any = None,
) -> None:
    """List the devices: one row each, merged from their statuses, last wills and ledgers.

    Example: `fedmq fleet ls --broker mqtt://127.0.0.1:1883 --state idle --sort staleness`
    """
    snap, _ = snapshot(broker_config(settings, password), fleet, timeout)
    rows = _rows(snap, state, stale_over, sort)
    if json:
        print_json(rows)
        return
    from rich.console import Console

    # Piped or captured, the table keeps every column rather than wrapping at 80.
    Console(width=None if sys.stdout.isatty() else 200).print(table(rows, snap))


@fleet_app.command("show")
@with_settings(BrokerSettings)
def show_command(
    device: str = typer.Argument(..., help="The device id."),
    fleet: str = FLEET,
    json: bool = JSON,
    timeout: float = TIMEOUT,
    password: str = PASSWORD,
    settings: Any = None,
) -> None:
    """Show one device: its row, its full retained status and its contribution ledger.

    Example: `fedmq fleet show pi-001 --broker mqtt://127.0.0.1:1883 --json`
    """
    snap, _ = snapshot(broker_config(settings, password), fleet, timeout)
    if device not in snap.statuses and device not in snap.ledgers:
        raise ConfigError("unknown_device", f"fleet {fleet!r} has no device {device!r}")
    doc = {
        **snap.row(device),
        "status": plain(snap.statuses.get(device)),
        "contributions": plain(snap.ledgers.get(device)),
    }
    if json:
        print_json(doc)
        return
    typer.echo(device_text(doc))


_TIMES = ("at", "first_seen", "last_seen")
# Optional wire fields that say nothing when unset (no error, DP off): no line for them.
_ABSENT_WHEN_NONE = ("reason", "message", "epsilon")


def _value(key: str, value: Any, now: float) -> str:
    if key in _TIMES and isinstance(value, int | float):
        return f"{utc(value)} ({_ago(value, now)})"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in sorted(value.items())) or "none"
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)


def device_text(doc: dict[str, Any], now: float | None = None) -> str:
    """``fleet show`` for a person: the row, then the full status and the contributions."""
    now = time.time() if now is None else now
    behind = "" if doc["staleness"] is None else f", {doc['staleness']} version(s) behind"
    held = "model unknown" if doc["model_version"] is None else f"model v{doc['model_version']}"
    lines = [
        f"{doc['device']}: {doc['state']}, {held}{behind}, last seen {_ago(doc['last_seen'], now)}"
    ]
    lines += [f"  {k:<14} {_value(k, doc[k], now)}" for k in ROW_DETAIL if doc.get(k) is not None]
    for title, key in (("status (retained by the device)", "status"),
                       ("contributions (the aggregator's ledger)", "contributions")):  # fmt: skip
        section = doc[key]
        lines += ["", title + ("" if section else ": none")]
        lines += [
            f"  {k:<14} {_value(k, v, now)}"
            for k, v in (section or {}).items()
            if k != "device" and not (k in _ABSENT_WHEN_NONE and v is None)
        ]
    return "\n".join(lines)


async def _watch(broker: BrokerConfig, fleet: str, timeout: float, draw: Any) -> None:
    raw: dict[str, bytes] = {}
    async for topic, payload in follow(broker, filters(topics(fleet)), timeout=timeout):
        if payload:
            raw[topic] = payload
        else:
            raw.pop(topic, None)
        draw(FleetSnapshot.from_retained(fleet, raw))


@fleet_app.command("watch")
@with_settings(BrokerSettings)
def watch_command(
    fleet: str = FLEET,
    state: str = STATE,
    stale_over: int = STALE_OVER,
    sort: str = SORT,
    json: bool = typer.Option(
        False, "--json", help="Instead of the table, the `fleet ls --json` list on every change."
    ),
    timeout: float = TIMEOUT,
    password: str = PASSWORD,
    settings: Any = None,
) -> None:
    """Keep the `fleet ls` table live, redrawn on every message, until Ctrl-C.

    With --json, one JSON document a line: the rows as `fleet ls --json` gives them.

    Example: `fedmq fleet watch --broker mqtt://127.0.0.1:1883 --sort last_seen`
    """
    from rich.live import Live

    broker = broker_config(settings, password)
    select([], state=state, sort=sort)  # a bad flag fails before the screen is taken
    if json:

        def emit(snap: FleetSnapshot) -> None:
            print_json(_rows(snap, state, stale_over, sort), indent=None)
            sys.stdout.flush()

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_watch(broker, fleet, timeout, emit))
        return
    with Live(table([], FleetSnapshot()), auto_refresh=False) as live:

        def draw(snap: FleetSnapshot) -> None:
            live.update(table(_rows(snap, state, stale_over, sort), snap), refresh=True)

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_watch(broker, fleet, timeout, draw))


def register(app: typer.Typer) -> None:
    app.add_typer(fleet_app, name="fleet")
