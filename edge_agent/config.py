"""The agent's settings, declared once: the ``[agent]`` table, ``$FEDMQ_*`` and flags.

Adding a setting is one ``setting(...)`` line on ``AgentConfig`` (plus its range check
in ``__post_init__``); the TOML key, the variable, both command lines and
docs/config.md follow from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmq.config import (
    BrokerConfig,
    BrokerSettings,
    check_chunking,
    chunk_timeout_setting,
    fleet_setting,
    keepalive_setting,
    max_payload_setting,
)
from fedmq.encodings import USAGE as ENCODING_USAGE
from fedmq.encodings import parse_encoding
from fedmq.errors import ConfigError
from fedmq.logs import LogSettings
from fedmq.settings import Resolved, Schema, check_choices, setting
from fedmq.topics import validate_device_id, validate_fleet

TASKS = ("classification", "regression")


@dataclass(frozen=True)
class AgentConfig:
    """Edge agent."""

    broker: BrokerConfig  # built from BrokerSettings; not a setting itself
    device: str = setting(help="This device's id (its MQTT username in production).")
    fleet: str = fleet_setting()
    state_dir: Path = setting(Path("fedmq-state"), help="Where the agent keeps its seq.")
    data: Path | None = setting(
        None, help="This device's data: a .csv (with a header row) or .npz file.", required=True
    )
    label: str = setting("label", help="Label column of a CSV data file.")
    task: str = setting("classification", help="What the model learns.", choices=TASKS)
    encoding: str = setting(
        "f32",
        help=f"Encoding of the updates sent: {ENCODING_USAGE} (bytes and accuracy of each: "
        "benchmarks/RESULTS.md, wire).",
        check=parse_encoding,
    )
    error_feedback: bool = setting(
        True, help="Carry what f16/q8/topk lose into the next update instead of losing it."
    )
    keepalive: int = keepalive_setting()
    timeout: float = setting(10.0, help="Seconds an MQTT operation may take before it fails.")
    backoff_base: float = setting(0.5, help="First reconnect delay in seconds (then doubles).")
    backoff_cap: float = setting(30.0, help="Longest reconnect delay in seconds.")
    compute_delay: float = setting(
        0.0, help="Extra seconds per local run (the demo's simulated slow devices)."
    )
    seed: int | None = setting(None, help="Seed of local training (none: random).")
    feature_stats: bool = setting(
        True, help="Publish this device's feature statistics (for federated standardization)."
    )
    data_poll: float = setting(
        5.0, help="Seconds between checks of the data file for new content (0: never)."
    )
    # Local limits on what a received model may ask of this device; beyond them the
    # agent refuses the model (status error, hyper_limit / train_timeout).
    max_epochs: int = setting(50, help="Most local epochs a received model may ask for.")
    max_batch: int = setting(1024, help="Largest local batch size a received model may ask for.")
    max_train_seconds: float = setting(
        300.0, help="Longest a local training run may take before it is abandoned (s)."
    )

    max_payload: int | None = max_payload_setting()
    chunk_timeout: float = chunk_timeout_setting()

    def __post_init__(self) -> None:
        check_chunking(self.max_payload, self.chunk_timeout)
        validate_device_id(self.device)
        validate_fleet(self.fleet)
        check_choices(self)
        if not 5 <= self.keepalive <= 3600:
            raise ConfigError("bad_setting", "keepalive must be between 5 and 3600 seconds")
        if not 0 <= self.data_poll < float("inf"):
            raise ConfigError("bad_setting", "data_poll must be a number >= 0")
        if self.compute_delay < 0:
            raise ConfigError("bad_setting", "compute_delay must be >= 0")
        if not (self.timeout > 0 and 0 < self.backoff_base <= self.backoff_cap):
            raise ConfigError("bad_setting", "need timeout > 0 and 0 < backoff_base <= backoff_cap")
        if self.max_epochs < 1 or self.max_batch < 1:
            raise ConfigError("bad_setting", "max_epochs and max_batch must be >= 1")
        if not 0 < self.max_train_seconds < float("inf"):
            raise ConfigError("bad_setting", "max_train_seconds must be a positive number")


SCHEMA = Schema("agent", BrokerSettings, AgentConfig, LogSettings)


def resolve_agent_settings(
    path: str | Path | None = None,
    *,
    flags: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Resolved:
    """The agent's effective settings (for ``--print-config`` and ``load_agent_config``)."""
    return SCHEMA.resolve(path, flags=flags, env=env)


def load_agent_config(
    path: str | Path | None = None,
    *,
    flags: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> AgentConfig:
    """Build the agent's config: flag > environment > ``[agent]`` table > default."""
    s = resolve_agent_settings(path, flags=flags, env=env)
    s.require()
    return s.build(AgentConfig, broker=s.build(BrokerSettings).connect())
