"""``fedmq demo``: the README's first command: a real federated run on this machine."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from aggregator.config import StrategyConfig
from fedmq.encodings import USAGE as ENCODING_USAGE
from fedmq.training import Hyper
from tools.cli.options import with_settings
from tools.cli.simulate import TaskName, config_from, fleet_strategy

if TYPE_CHECKING:
    from tools.sim.demo import DemoConfig, Snapshot


@with_settings(StrategyConfig, Hyper, default_notes={Hyper: "the task's"}, env=False)
def demo_command(
    task: TaskName = typer.Option(TaskName.digits, help="Bundled task to learn."),
    devices: int = typer.Option(
        20, min=1, max=500, help="Simulated devices (one MQTT connection each)."
    ),
    broker: str = typer.Option(
        None, help="Use this broker (mqtt://host:port) instead of starting an embedded one."
    ),
    fleet: str = typer.Option("demo", help="Fleet name: topics live under fl/FLEET/."),
    partition: str = typer.Option("iid", help="Data split: iid | dirichlet:ALPHA | shards:K."),
    delays: str = typer.Option(
        "lognormal:0.2,0.5", help="Per-device compute delay: lognormal:MEDIAN_S,SIGMA | constant:S."
    ),
    target: float = typer.Option(
        None, help="Stop at this test accuracy (digits, default 0.92) or test MSE (linreg, 0.0105)."
    ),
    budget: float = typer.Option(60.0, help="Stop after this many wall-clock seconds."),
    round_deadline: float = typer.Option(5.0, help="FedAvg: seconds before a round closes."),
    encoding: str = typer.Option("f32", help=f"Update encoding: {ENCODING_USAGE}."),
    seed: int = typer.Option(0, help="Seed for data split, delays, init and training."),
    out_dir: Path = typer.Option(Path("runs/demo"), help="ONNX model, history and agent state."),
    malicious: float = typer.Option(
        0.0, help="Fraction of devices that attack the model (0 to 1), e.g. 0.2."
    ),
    attack: str = typer.Option(
        "signflip", help="What malicious devices send: signflip | noise | nan | labelflip."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object and nothing else."),
    settings: Any = None,
) -> None:
    """Run a real federation on this machine: a broker, the aggregator and N devices.

    Without --broker an embedded MQTT 3.1.1 broker runs in-process. Each device is a real
    edge agent with its own connection, data shard and compute delay. Stops at --target
    or after --budget seconds and prints a summary. Strategy options and their defaults
    are the aggregator's (docs/config.md).

    Example: `fedmq demo --devices 10 --strategy fedasync --malicious 0.2 --attack signflip`
    """
    from tools.sim.demo import DemoConfig, run_demo

    cfg = config_from(DemoConfig, locals(), task=task.value, **fleet_strategy(settings))
    if as_json:
        typer.echo(json.dumps(asyncio.run(run_demo(cfg))))
        return
    _run_live(cfg)


def _run_live(cfg: DemoConfig) -> None:
    """The demo with a live table, then the summary."""
    from tools.sim.demo import run_demo

    console = Console()
    metric = "accuracy" if cfg.task == TaskName.digits.value else "test MSE"
    console.print(
        f"[bold]fedmq demo[/]: {cfg.devices} devices, {cfg.strategy}, task {cfg.task}, "
        f"target {metric} {cfg.goal}, budget {cfg.budget:g}s"
    )
    with Live(console=console, refresh_per_second=4, transient=True) as live:

        def progress(s: Snapshot) -> None:
            live.update(_live_table(s, metric))

        summary = asyncio.run(run_demo(cfg, progress))
    _print_summary(console, summary)


def _live_table(s: Snapshot, metric: str) -> Table:
    table = Table(show_header=True, header_style="bold")
    for col in ("time", "version", metric, "updates", "updates/s", "online"):
        table.add_column(col, justify="right")
    value = "-" if s.metric is None else f"{s.metric:.4f}"
    table.add_row(
        f"{s.elapsed:5.1f}s",
        str(s.version),
        value,
        str(s.updates_applied),
        f"{s.updates_per_s:.1f}",
        f"{s.online}/{s.devices}",
    )
    return table


def _print_summary(console: Console, out: dict[str, Any]) -> None:
    table = Table(title="what happened", show_header=False)
    for key, value in out.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
