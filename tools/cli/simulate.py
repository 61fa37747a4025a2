"""``fedmq simulate``: compare strategies on a virtual clock, fast and deterministic."""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table


class TaskName(str, Enum):
    digits = "digits"
    linreg = "linreg"


class StrategyName(str, Enum):
    fedasync = "fedasync"
    fedbuff = "fedbuff"
    fedavg = "fedavg"


def strategy_params(strategy: StrategyName, **given: Any) -> dict[str, Any]:
    """Keep only the parameters that belong to the chosen strategy (those the user set)."""
    allowed = {
        StrategyName.fedasync: ("alpha", "staleness", "max_staleness"),
        StrategyName.fedbuff: ("k", "server_lr", "max_staleness"),
        StrategyName.fedavg: ("clients_per_round", "server_lr"),
    }[strategy]
    return {k: v for k, v in given.items() if k in allowed and v is not None}


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
    strategy: StrategyName = typer.Option(StrategyName.fedbuff, help="Server strategy."),
    alpha: float = typer.Option(None, help="FedAsync: mixing weight α in (0, 1]."),
    staleness: str = typer.Option(
        None, help="FedAsync: staleness function constant | poly:A | hinge:A,B."
    ),
    max_staleness: int = typer.Option(
        None, min=0, help="FedAsync/FedBuff: reject updates older than this many versions."
    ),
    k: int = typer.Option(None, "--k", min=1, help="FedBuff: buffer size K."),
    server_lr: float = typer.Option(None, help="FedBuff/FedAvg: server learning rate η_g."),
    clients_per_round: int = typer.Option(
        None, min=1, help="FedAvg: devices per round (default: all)."
    ),
    round_deadline: float = typer.Option(
        None, help="FedAvg: close a round after this many virtual seconds (default: wait)."
    ),
    lr: float = typer.Option(None, help="Local learning rate (default: the task's)."),
    epochs: int = typer.Option(None, min=1, help="Local epochs (default: the task's)."),
    batch: int = typer.Option(None, min=1, help="Local batch size (default: the task's)."),
    mu: float = typer.Option(None, min=0, help="FedProx proximal weight μ."),
    clip: float = typer.Option(None, min=0, help="Clip each delta to this L2 norm."),
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
        "(Gaussian, 10x the honest RMS) | nan | labelflip (trained on labels C-1-y).",
    ),
    defence: bool = typer.Option(
        True,
        "--defence/--no-defence",
        help="Refuse non-finite deltas and norms above 4x the running median; "
        "FedBuff also uses a 20% trimmed mean.",
    ),
    encoding: str = typer.Option(
        "f32", help="How devices put their deltas on the wire: f32 | f16 | q8."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object and nothing else."),
) -> None:
    """Simulate a fleet in-process on a virtual clock (no network, no sleeping).

    Each device trains on its own shard; its runs take virtual time drawn from --delays.
    The global model is evaluated on the task's held-out test set as versions appear.
    The same --seed gives the same output.
    """
    hyper = {"lr": lr, "epochs": epochs, "batch": batch, "mu": mu, "clip": clip}
    from tools.sim.simulate import SimConfig, simulate

    cfg = SimConfig(
        task=task.value,
        devices=devices,
        partition=partition,
        delays=delays,
        strategy=strategy.value,
        strategy_params=strategy_params(
            strategy,
            alpha=alpha,
            staleness=staleness,
            max_staleness=max_staleness,
            k=k,
            server_lr=server_lr,
            clients_per_round=clients_per_round,
        ),
        hyper={k: v for k, v in hyper.items() if v is not None},
        seed=seed,
        target=target,
        budget=budget,
        round_deadline=round_deadline,
        until_target=until_target,
        malicious=malicious,
        attack=attack,
        defence=defence,
        encoding=encoding,
    )
    if as_json:
        result = simulate(cfg)
        typer.echo(json.dumps(result.to_dict()))
        return
    console = Console(stderr=True)
    metric = "accuracy" if task is TaskName.digits else "test MSE"
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("t={task.completed:.2f}/{task.total:.0f}s  {task.fields[status]}"),
        console=console,
        transient=True,
    ) as bar:
        job = bar.add_task(f"{cfg.strategy} on {cfg.task}", total=budget, status="")

        def progress(t: float, version: int, value: float) -> None:
            bar.update(job, completed=t, status=f"v{version} {metric} {value:.4f}")

        result = simulate(cfg, progress)
    _print_summary(result.to_dict())


def _print_summary(out: dict[str, Any]) -> None:
    table = Table(title="fedmq simulate", show_header=False)
    for key, value in out.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_command)
