"""The aggregator's settings, declared once: the ``[aggregator]`` table, ``$FEDMQ_*``, flags.

Four sections share the one flat table: the broker (``BrokerSettings``), the daemon
(``AggregatorConfig``), the strategy (``StrategyConfig``) and the hyper-parameters it
ships to devices (``fedmq.training.Hyper``). The strategy classes take their defaults
from ``StrategyConfig``, so a default lives in one place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
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
from fedmq.errors import ConfigError
from fedmq.logs import LogSettings
from fedmq.settings import Schema, check_choices, setting, settings_of
from fedmq.training import Hyper

STRATEGY_NAMES = ("fedasync", "fedbuff", "fedavg")


@dataclass(frozen=True)
class AggregatorConfig:
    """Aggregator daemon."""

    broker: BrokerConfig  # built from BrokerSettings; not a setting itself
    model: str | None = setting(
        None, help="Architecture of the global model: mlp:64,32,10:relu or linear:1,1 "
        "(with --schema, the hidden widths are enough: mlp:32).",
        required=True,
    )  # fmt: skip
    fleet: str = fleet_setting()
    schema: Path | None = setting(
        None, help="The fleet's data schema (fedmq data schema); carried to devices in the model."
    )
    eval: Path | None = setting(None, help="Held-out .csv/.npz to evaluate each version on.")
    seed: int = setting(0, help="Seed of the initial weights.")
    out_dir: Path = setting(
        Path("fedmq-aggregator"), help="Ledger, ONNX export and history.jsonl go here."
    )
    publish_interval: float = setting(
        0.2, help="Seconds between retained model publishes, at most one each."
    )
    status_interval: float = setting(2.0, help="Seconds between status heartbeats.")
    progress_interval: float = setting(
        10.0, help="Seconds between INFO progress lines in the log, at most one each."
    )
    round_deadline: float = setting(
        30.0, help="A FedAvg round, or a partial FedBuff buffer, closes after this many seconds."
    )
    max_update_bytes: int = setting(8 * 1024 * 1024, help="Largest update payload accepted.")
    max_payload: int | None = max_payload_setting()
    chunk_timeout: float = chunk_timeout_setting()
    chunk_buffer: int = setting(
        32 * 1024 * 1024, help="Bytes of incomplete chunked updates held in all, oldest dropped."
    )
    export_onnx: bool = setting(True, help="Export each published version to out_dir/model.onnx.")
    client_id: str | None = setting(
        None, help="MQTT client id (none: fedmq-aggregator-FLEET, one session per fleet)."
    )
    keepalive: int = keepalive_setting()
    # Federated standardization: devices' feature statistics, merged into the model's prep.
    standardize: bool = setting(
        True, help="Standardize features with the fleet's merged statistics (off: data is scaled)."
    )
    stats_quorum: int = setting(
        1, help="Feature statistics from this many devices before the first model goes out."
    )
    stats_wait: float = setting(
        10.0, help="Or at most this many seconds, then the first model goes out anyway."
    )
    metrics_port: int | None = setting(None, help="Serve Prometheus /metrics on 127.0.0.1:PORT.")
    # Crash safety: the SQLite ledger (out_dir/ledger.sqlite) plus a persistent MQTT
    # session whose updates are acknowledged only after their effect is committed.
    ledger: bool = setting(
        True, help="Keep the crash-safe ledger in out_dir/ledger.sqlite (and ledger.sqlite-blobs/)."
    )
    checkpoint_every: int = setting(100, help="Checkpoint the strategy every this many updates.")
    durable: bool = setting(
        False, help="fsync every ledger commit (survive power loss, not just kill -9)."
    )
    # The gate on every candidate model (aggregator.strategies.gate), always on: it
    # refuses only models that have diverged, never an honest step.
    gate_max_weight: float = setting(
        1e6, help="Refuse a candidate model with any |weight| above this."
    )
    gate_loss_factor: float = setting(
        2.0, help="With --eval: refuse a candidate whose loss exceeds this × the last good one."
    )
    gate_loss_margin: float = setting(
        1.0, help="With --eval: the gate's loss bound is factor × last good loss + this."
    )
    # The start check (aggregator.startup): what to do when the ledger disagrees with
    # the model the broker retains. Not in a file: a standing answer would defeat it.
    accept_rollback: bool = setting(
        False, help="If the ledger is behind the fleet's retained model: continue from it and "
        "announce a rollback, which devices follow.", sources=("flag", "env"),
    )  # fmt: skip
    new_run: bool = setting(
        False, help="If the ledger disagrees with the fleet's retained model: continue from it "
        "as a new run (a fresh run id).", sources=("flag", "env"),
    )  # fmt: skip
    dp_delta: float = setting(
        1e-5, help="DP accounting: ε is reported for this δ (needs dp_noise > 0)."
    )

    def __post_init__(self) -> None:
        check_chunking(self.max_payload, self.chunk_timeout)
        positive = ("publish_interval", "status_interval", "round_deadline", "max_update_bytes")
        positive += ("progress_interval", "chunk_buffer")
        for name in (*positive, "checkpoint_every"):
            if not getattr(self, name) > 0:
                raise ConfigError("bad_setting", f"{name} must be > 0, got {getattr(self, name)}")
        if self.stats_quorum < 0 or not 0 <= self.stats_wait < float("inf"):
            raise ConfigError("bad_setting", "need stats_quorum >= 0 and stats_wait >= 0")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(
                "bad_setting", f"metrics_port must be 0..65535, got {self.metrics_port}"
            )
        gate = (
            ("gate_max_weight", self.gate_max_weight > 0, "> 0"),
            ("gate_loss_factor", self.gate_loss_factor >= 1, ">= 1"),
            ("gate_loss_margin", self.gate_loss_margin >= 0, ">= 0"),
        )
        for name, ok, rule in gate:
            if not (ok and math.isfinite(getattr(self, name))):
                raise ConfigError("bad_setting", f"{name} must be finite and {rule}")
        if self.accept_rollback and self.new_run:
            raise ConfigError("bad_setting", "give --accept-rollback or --new-run, not both")
        if not 0 < self.dp_delta < 1:
            raise ConfigError("bad_setting", f"dp_delta must be in (0, 1), got {self.dp_delta}")
        if not 5 <= self.keepalive <= 3600:
            raise ConfigError("bad_setting", "keepalive must be between 5 and 3600 seconds")


@dataclass(frozen=True)
class StrategyConfig:
    """Strategy and defences."""

    strategy: str = setting("fedbuff", help="Server strategy.", choices=STRATEGY_NAMES)
    alpha: float = setting(0.6, help="FedAsync mixing weight α in (0, 1].", applies=("fedasync",))
    staleness: str = setting(
        "poly:0.5", help="FedAsync staleness function: constant | poly:A | hinge:A,B.",
        applies=("fedasync",),
    )  # fmt: skip
    max_staleness: int = setting(
        64, help="Refuse updates older than this many versions.", applies=("fedasync", "fedbuff")
    )
    k: int = setting(
        10,
        help="FedBuff buffer size K, the most: min(K, devices online) close a version.",
        applies=("fedbuff",),
    )
    server_lr: float = setting(1.0, help="Server learning rate η_g.", applies=("fedbuff", "fedavg"))
    server_lr_schedule: str = setting(
        "constant", help="Server learning-rate schedule over versions, scaling η_g (FedAsync: α): "
        "constant | step:E,G[,F] | cosine:T[,F] | invsqrt:W[,F] (floor F: 0.1).",
        applies=("fedasync", "fedbuff", "fedavg"),
    )  # fmt: skip
    server_opt: str = setting(
        "none", help="FedBuff server optimizer on the buffer's mean (Reddi et al. 2021).",
        choices=("none", "momentum", "adam", "yogi"), applies=("fedbuff",),
    )  # fmt: skip
    server_beta1: float = setting(
        0.9, help="Server momentum / first-moment decay β1.", applies=("fedbuff",)
    )
    server_beta2: float = setting(
        0.99, help="FedAdam/FedYogi second-moment decay β2.", applies=("fedbuff",)
    )
    server_tau: float = setting(
        1e-3, help="FedAdam/FedYogi adaptivity τ (v starts at τ²).", applies=("fedbuff",)
    )
    clients_per_round: int = setting(
        10, help="FedAvg: reports that close a round.", applies=("fedavg",)
    )
    defence: bool = setting(
        True, help="Screen updates (non-finite, norm bound) and trim FedBuff's mean."
    )
    norm_factor: float = setting(
        4.0, help="Refuse updates above this multiple of the recent median norm "
        "(under a DP policy, dp_clip > 0, the policy sets the bound instead).",
        requires="defence",
    )  # fmt: skip
    norm_mode: str = setting(
        "reject", help="What to do above the norm bound.", choices=("reject", "clip", "off"),
        requires="defence",
    )  # fmt: skip
    norm_window: int = setting(
        50, help="The median is over this many most recent devices.", requires="defence"
    )
    norm_warmup: int = setting(
        5, help="The median bound needs this many devices; until then the absolute one holds.",
        requires="defence",
    )  # fmt: skip
    norm_abs_factor: float = setting(
        4.0, help="Until warmup: refuse deltas above this multiple of max(model norm, floor).",
        requires="defence",
    )  # fmt: skip
    norm_abs_floor: float = setting(
        1.0, help="The model norm the absolute bound assumes at the least.", requires="defence"
    )
    sample_cap_factor: float = setting(
        10.0, help="Cap claimed sample counts at this multiple of the other devices' median.",
        requires="defence",
    )  # fmt: skip
    trim: float = setting(
        0.2, help="Trimmed mean: fraction of each coordinate cut at each end (0: plain mean).",
        applies=("fedbuff",), requires="defence",
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_choices(self)


def strategy_params(strategy: str, defence: bool, given: Mapping[str, Any]) -> dict[str, Any]:
    """The strategy parameters a user set (``None``: not set), refusing any that do not apply.

    ``make_strategy`` fills in the rest from ``StrategyConfig``'s defaults.
    """
    out = {}
    for s in settings_of(StrategyConfig):
        value = given.get(s.name)
        if value is None or s.name in ("strategy", "defence"):
            continue
        if s.applies and strategy not in s.applies:
            raise ConfigError(
                "bad_param", f"{s.name} applies to {' and '.join(s.applies)}, not {strategy}"
            )
        if s.requires == "defence" and not defence:
            raise ConfigError("bad_param", f"{s.name} only applies with defence on")
        out[s.name] = value
    return out


SCHEMA = Schema("aggregator", BrokerSettings, AggregatorConfig, StrategyConfig, Hyper, LogSettings)
