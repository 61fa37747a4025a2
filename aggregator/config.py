"""The aggregator's settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedmq.config import BrokerConfig


@dataclass(frozen=True)
class AggregatorConfig:
    broker: BrokerConfig
    fleet: str = "default"
    out_dir: Path = Path("fedmq-aggregator")
    publish_interval: float = 0.2  # seconds between retained model publishes, at most one each
    status_interval: float = 2.0
    # A FedAvg round, or a partial FedBuff buffer, closes after this long without a version.
    round_deadline: float = 30.0
    max_update_bytes: int = 8 * 1024 * 1024
    export_onnx: bool = True
    client_id: str | None = None  # default fedmq-aggregator-{fleet}: one session per fleet
    keepalive: int = 30
    # Crash safety: the SQLite ledger (out_dir/ledger.sqlite) plus a persistent MQTT
    # session whose updates are acknowledged only after their effect is committed.
    ledger: bool = True
    checkpoint_every: int = 100
    durable: bool = False  # fsync every commit (power loss), not just survive kill -9
