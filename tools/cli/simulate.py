"""``fedmq simulate``: compare strategies on a virtual clock, fast and deterministic."""

from __future__ import annotations

import dataclasses
import json
from enum import Enum
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from aggregator.config import AggregatorConfig, StrategyConfig, strategy_params
from fedmq.encodings import USAGE as ENCODING_USAGE
from fedmq.settings import given_flags, settings_of
from fedmq.training import Hyper
from tools.cli.options import with_settings


class TaskName(str, Enum):
    digits = "digits"
    linreg = "linreg"


T = TypeVar("T")
# The aggregator's δ setting, its help as declared there (fedmq.settings).
DP_DELTA = next(s for s in settings_of(AggregatorConfig) if s.name == "dp_delta")


def config_from(cls: type[T], given: dict[str, Any], **extra: Any) -> T:
    """``cls`` built from a command's own options (those that are its fields) and ``extra``."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in given.items() if k in names and k not in extra}, **extra)


def fleet_strategy(settings: dict[str, Any]) -> dict[str, Any]:
    """The strategy, defence, parameters and hyper-parameter overrides the user gave.

    Defaults are ``StrategyConfig``'s (the aggregator's); hyper-parameters not given stay
    the task's own.
    """
    given = given_flags((StrategyConfig, Hyper), settings)
    strategy = given.pop("strategy", StrategyConfig.strategy)
    defence = given.pop("defence", StrategyConfig.defence)
    hyper_names = {s.name for s in settings_of(Hyper)}
    return {
        "strategy": strategy,
        "defence": defence,
        "strategy_params": strategy_params(
            strategy, defence, {k: v for k, v in given.items() if k not in hyper_names}
        ),
        "hyper": {k: v for k, v in given.items() if k in hyper_names},
    }


@with_settings(StrategyConfig, Hyper, default_notes={Hyper: "the task's"}, env=False)
def simulate_command(
    task: TaskName = typer.Option(TaskName.digits, help="Bundled task to learn."),
    devices: int = typer.Option(20, min=1, help="Number of simulated devices."),
    partition: str = typer.Option(
        "iid", help="How the training set is split: iid | dirichlet:ALPHA | shards:K."
    ),
    delays: str = typer.Option(
        "lognormal:0.05,1.0",
        help="Per-device compute delay: lognormal:MEDIAN_S,SIGMA | constant:S.",
    ),
    round_deadline: float = typer.Option(
        None, help="FedAvg: close a round after this many virtual seconds (default: wait)."
    ),
    seed: int = typer.Option(0, help="Seed for data split, init, delays and training."),
    target: float = typer.Option(0.90, help="Test accuracy that counts as reached."),
    budget: float = typer.Option(30.0, help="Virtual seconds to simulate."),
    until_target: bool = typer.Option(False, help="Stop as soon as the target is reached."),
    malicious: float = typer.Option(
        0.0, help="Fraction (0 to 1) of the devices, chosen by --seed, that send --attack."
    ),
    attack: str = typer.Option(
        "signflip",
        help="What malicious devices send: signflip (the honest delta x -10) | noise "
        "(Gaussian, 10x the honest RMS) | nan | labelflip (trained on labels C-1-y) | "
        "ridebound (a sign-flip riding just under the norm bound, learned from its refusals).",
    ),
    encoding: str = typer.Option(
        "f32", help=f"How devices put their deltas on the wire: {ENCODING_USAGE}."
    ),
    error_feedback: bool = typer.Option(
        True, help="Devices carry what f16/q8/topk lose into their next update."
    ),
    dp_delta: float = typer.Option(DP_DELTA.default, "--dp-delta", help=DP_DELTA.help),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object and nothing else."),
    settings: Any = None,
) -> None:
    """Simulate a fleet in-process on a virtual clock (no network, no sleeping).

    Each device trains on its own shard; its runs take virtual time drawn from --delays.
    The global model is evaluated on the task's held-out test set as versions appear.
    The same --seed gives the same output. Strategy options and their defaults are the
    aggregator's (docs/config.md).

    Example: `fedmq simulate --strategy fedasync --partition dirichlet:0.3 --budget 20 --json`
    """
    from tools.sim.simulate import SimConfig, simulate

    cfg = config_from(SimConfig, locals(), task=task.value, **fleet_strategy(settings))
    if as_json:
        typer.echo(json.dumps(simulate(cfg).to_dict()))
        return
    _print_summary(_run_live(cfg).to_dict())


def _run_live(cfg: Any) -> Any:
    """Simulate with a progress bar on stderr (stdout stays the summary)."""
    from tools.sim.simulate import simulate

    metric = "accuracy" if cfg.task == TaskName.digits.value else "test MSE"
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("t={task.completed:.2f}/{task.total:.0f}s  {task.fields[status]}"),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        job = bar.add_task(f"{cfg.strategy} on {cfg.task}", total=cfg.budget, status="")

        def progress(t: float, version: int, value: float) -> None:
            bar.update(job, completed=t, status=f"v{version} {metric} {value:.4f}")

        return simulate(cfg, progress)


def _print_summary(out: dict[str, Any]) -> None:
    table = Table(title="fedmq simulate", show_header=False)
    for key, value in out.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_command)
