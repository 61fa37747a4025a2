"""``fedmq agent`` and ``fedmq aggregator``: the two long-running services."""

from __future__ import annotations

from pathlib import Path

import typer

CONFIG = typer.Option(None, "--config", help="TOML file ([agent] / [aggregator] tables).")
BROKER = typer.Option(
    None, help="Broker URL: mqtt://host:1883 or mqtts://host:8883 (or $FEDMQ_BROKER)."
)
USERNAME = typer.Option(None, help="Broker username (or $FEDMQ_USERNAME).")
PASSWORD = typer.Option(
    None, help="Broker password; prefer $FEDMQ_PASSWORD so it stays out of `ps`."
)
CA = typer.Option(None, help="CA certificate (PEM) to verify an mqtts:// broker.")
CERT = typer.Option(None, help="Client certificate (PEM) for mutual TLS.")
KEY = typer.Option(None, help="Client private key (PEM) for mutual TLS.")
FLEET = typer.Option(None, help="Fleet name: topics live under fl/FLEET/ (default: default).")


def agent_command(
    config: Path = CONFIG,
    broker: str = BROKER,
    username: str = USERNAME,
    password: str = PASSWORD,
    ca: Path = CA,
    cert: Path = CERT,
    key: Path = KEY,
    fleet: str = FLEET,
    device: str = typer.Option(None, help="This device's id (its MQTT username in production)."),
    data: Path = typer.Option(None, help="This device's data: a .csv (with a header) or .npz."),
    label: str = typer.Option(None, help="Label column of a CSV file (default: label)."),
    task: str = typer.Option(None, help="classification (default) or regression."),
    state_dir: Path = typer.Option(
        None, help="Where the agent keeps its seq (default: fedmq-state)."
    ),
    encoding: str = typer.Option(None, help="Update encoding: f32 (default), f16 or q8."),
    keepalive: int = typer.Option(None, help="MQTT keepalive in seconds (default 30)."),
) -> None:
    """Run the edge agent: train on each new global model and publish the delta.

    Stops cleanly on SIGTERM or Ctrl-C, marking the device offline.
    """
    from edge_agent.main import run

    run(config, _flags(locals()))


def aggregator_command(
    config: Path = CONFIG,
    broker: str = BROKER,
    username: str = USERNAME,
    password: str = PASSWORD,
    ca: Path = CA,
    cert: Path = CERT,
    key: Path = KEY,
    fleet: str = FLEET,
    model: str = typer.Option(None, help="Architecture: mlp:64,32,10:relu or linear:1,1."),
    strategy: str = typer.Option(None, help="fedasync | fedbuff (default) | fedavg."),
    eval: Path = typer.Option(None, help="Held-out .csv/.npz to evaluate each version on."),
    out_dir: Path = typer.Option(None, help="ONNX export and history.jsonl go here."),
    publish_interval: float = typer.Option(None, help="Publish the model at most this often (s)."),
    round_deadline: float = typer.Option(None, help="FedAvg: seconds before a round closes."),
    alpha: float = typer.Option(None, help="FedAsync: mixing weight α."),
    staleness: str = typer.Option(None, help="FedAsync: constant | poly:A | hinge:A,B."),
    max_staleness: int = typer.Option(None, help="Reject updates older than this many versions."),
    k: int = typer.Option(None, "--k", help="FedBuff: buffer size."),
    server_lr: float = typer.Option(None, help="FedBuff/FedAvg: server learning rate."),
    clients_per_round: int = typer.Option(None, help="FedAvg: reports that close a round."),
    defence: bool = typer.Option(
        None,
        "--defence/--no-defence",
        help="Screen updates (non-finite, norm bound) and trim FedBuff's mean (default on).",
    ),
    norm_factor: float = typer.Option(
        None, help="Refuse updates above this multiple of the recent median norm (3.0)."
    ),
    norm_mode: str = typer.Option(None, help="reject (default) | clip | off."),
    trim: float = typer.Option(None, help="FedBuff trimmed mean: fraction cut at each end (0.2)."),
    lr: float = typer.Option(None, help="Devices' local learning rate."),
    epochs: int = typer.Option(None, help="Devices' local epochs."),
    batch: int = typer.Option(None, help="Devices' local batch size."),
    mu: float = typer.Option(None, help="FedProx proximal weight μ for devices."),
    clip: float = typer.Option(None, help="Devices clip their delta to this L2 norm."),
    seed: int = typer.Option(None, help="Seed of the initial weights."),
) -> None:
    """Run the aggregator daemon: validate updates, apply the strategy, publish the model."""
    from aggregator.main import run

    run(config, _flags(locals()))


def _flags(given: dict) -> dict:
    return {k: v for k, v in given.items() if k != "config" and v is not None}


def register(app: typer.Typer) -> None:
    app.command("agent")(agent_command)
    app.command("aggregator")(aggregator_command)
