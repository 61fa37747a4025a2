"""The agent's settings: TOML file < FEDMQ_* environment < flags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmq.config import BROKER_FIELDS, BrokerConfig, layered, load_toml
from fedmq.errors import ConfigError
from fedmq.topics import validate_device_id, validate_fleet

# name -> type; every one may come from the [agent] table, $FEDMQ_<NAME> or --<name>.
FIELDS: dict[str, type] = {
    **BROKER_FIELDS,
    "fleet": str,
    "device": str,
    "data": Path,
    "label": str,
    "task": str,
    "state_dir": Path,
    "encoding": str,
    "keepalive": int,
    "compute_delay": float,
    "seed": int,
    "max_epochs": int,
    "max_batch": int,
    "max_train_seconds": float,
}
ENCODINGS = ("f32", "f16", "q8")


@dataclass(frozen=True)
class AgentConfig:
    broker: BrokerConfig
    device: str
    fleet: str = "default"
    state_dir: Path = Path("fedmq-state")
    data: Path | None = None
    label: str = "label"
    task: str = "classification"
    encoding: str = "f32"
    keepalive: int = 30
    timeout: float = 10.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    compute_delay: float = 0.0  # extra seconds per run; the demo's simulated slow devices
    seed: int | None = None
    # Local limits on what a received model may ask of this device; beyond them the
    # agent refuses the model (status error, hyper_limit / train_timeout).
    max_epochs: int = 50
    max_batch: int = 1024
    max_train_seconds: float = 300.0

    def __post_init__(self) -> None:
        validate_device_id(self.device)
        validate_fleet(self.fleet)
        if self.task not in ("classification", "regression"):
            raise ConfigError("bad_setting", "task must be classification or regression")
        if self.encoding not in ENCODINGS:
            raise ConfigError("bad_setting", f"encoding must be one of {ENCODINGS}")
        if not 5 <= self.keepalive <= 3600:
            raise ConfigError("bad_setting", "keepalive must be between 5 and 3600 seconds")
        if self.compute_delay < 0:
            raise ConfigError("bad_setting", "compute_delay must be >= 0")
        if self.max_epochs < 1 or self.max_batch < 1:
            raise ConfigError("bad_setting", "max_epochs and max_batch must be >= 1")
        if not 0 < self.max_train_seconds < float("inf"):
            raise ConfigError("bad_setting", "max_train_seconds must be a positive number")


def load_agent_config(
    path: str | Path | None = None,
    *,
    flags: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> AgentConfig:
    """Build the agent's config; the TOML file's ``[agent]`` table holds the same names."""
    file = load_toml(path).get("agent", {}) if path else {}
    if not isinstance(file, dict):
        raise ConfigError("bad_toml", "[agent] must be a table")
    s = layered(FIELDS, file=file, env=env, flags=flags)
    for required in ("broker", "device"):
        if required not in s:
            raise ConfigError(
                "missing_setting",
                f"{required} is not set: give --{required}, $FEDMQ_{required.upper()} "
                f"or {required} = ... in the [agent] table",
            )
    broker = BrokerConfig.from_settings(s)
    return AgentConfig(broker=broker, **s)
