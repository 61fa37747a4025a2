"""Running the agent as a service: signals, logging, and a typer-free command line.

A Pi that installed only ``fedmq[agent]`` has no typer; ``fedmq agent`` then lands
here (see ``tools.entry``), as does ``python -m edge_agent``. Its flags are derived
from the same declarations as the full CLI's (``edge_agent.config.SCHEMA``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

from edge_agent.config import SCHEMA, AgentConfig, load_agent_config, resolve_agent_settings
from fedmq.errors import ConfigError, FedmqError
from fedmq.logs import LogSettings
from fedmq.settings import refuse_password_flag

EXAMPLE = (
    "Example: fedmq agent --broker mqtts://mqtt.example.org:8883 --ca ca.crt "
    "--device pi-001 --data local.csv --password-file pi-001.pw"
)


async def serve(cfg: AgentConfig) -> None:
    """Run the agent until SIGTERM or SIGINT, then publish ``offline`` and return."""
    from edge_agent.agent import Agent
    from edge_agent.data import LocalData

    if cfg.data is None:  # load_agent_config requires it; a caller building cfg may not
        raise ConfigError("missing_setting", "data is not set: give --data FILE.csv|FILE.npz")

    def load(path: Path) -> LocalData:
        return LocalData.open(path, cfg.label, cfg.task)

    agent = Agent(cfg, load(cfg.data), loader=load)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.run(stop)


def run(config: Path | None, flags: dict[str, Any], *, print_config: bool = False) -> None:
    """``fedmq agent``: print the effective settings, or run until stopped."""
    resolved = resolve_agent_settings(config, flags=flags)
    if print_config:
        print(resolved.to_json())
        return
    cfg = load_agent_config(config, flags=flags)
    resolved.build(LogSettings).configure()
    asyncio.run(serve(cfg))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, like every other user mistake; argparse's default adds the usage.
        print(f"fedmq: error: {message}", file=sys.stderr)
        sys.exit(ConfigError.exit_code)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fedmq agent", description="Run the fedmq edge agent.", epilog=EXAMPLE)
    p.add_argument("--config", type=Path, help="TOML file with an [agent] table")
    p.add_argument(
        "--print-config", action="store_true", help="print the effective settings as JSON"
    )
    p.add_argument("--password", help=argparse.SUPPRESS)  # refused, with the reason
    for s in SCHEMA.settings:
        if "flag" not in s.sources:
            continue
        text = s.help.replace("%", "%%")  # argparse formats help with %
        if s.type is bool:
            p.add_argument(s.flag, dest=s.name, action=argparse.BooleanOptionalAction, help=text)
        else:  # a string, converted by the schema exactly as an environment value is
            p.add_argument(s.flag, dest=s.name, metavar=s.type_name.upper(), help=text)
    return p


def main(argv: list[str] | None = None) -> None:
    args = vars(parser().parse_args(argv))
    try:
        refuse_password_flag(args.pop("password"))
        run(args.pop("config"), args, print_config=args.pop("print_config"))
    except FedmqError as exc:
        print(f"fedmq: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
