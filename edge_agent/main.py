"""Running the agent as a service: signals, logging, and a typer-free command line.

A Pi that installed only ``fedmq[agent]`` has no typer; ``fedmq agent`` then lands
here (see ``tools.entry``), as does ``python -m edge_agent``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from edge_agent.config import FIELDS, AgentConfig, load_agent_config
from fedmq.data import load_dataset
from fedmq.errors import ConfigError, FedmqError


async def serve(cfg: AgentConfig) -> None:
    """Run the agent until SIGTERM or SIGINT, then publish ``offline`` and return."""
    from edge_agent.agent import Agent

    if cfg.data is None:
        raise ConfigError("missing_setting", "data is not set: give --data FILE.csv|FILE.npz")
    agent = Agent(cfg, load_dataset(cfg.data, label=cfg.label, task=cfg.task))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.run(stop)


def run(config: Path | None, flags: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = load_agent_config(config, flags={k: v for k, v in flags.items() if v is not None})
    asyncio.run(serve(cfg))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedmq agent", description="Run the fedmq edge agent.")
    p.add_argument("--config", type=Path, help="TOML file with an [agent] table")
    for name, typ in FIELDS.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ)
    return p


def main(argv: list[str] | None = None) -> None:
    args = vars(parser().parse_args(argv))
    try:
        run(args.pop("config"), args)
    except FedmqError as exc:
        print(f"fedmq: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
