"""One row per device, merged from what the broker retains for a fleet.

A device's retained status (or the last will that replaced it) says what it is doing;
the aggregator's retained ledger for it says what became of its updates; the
aggregator's status gives the current version, against which staleness is counted.
A global model retained in chunks (a broker with a payload limit, docs/wire.md 3.8) is
put together from its manifest and chunk topics, as a device does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedmq.chunks import Manifest, ModelChunks, is_manifest
from fedmq.errors import ConfigError, TopicError, WireError
from fedmq.topics import Topics, parse
from fedmq.wire import AggregatorStatus, DeviceLedger, DeviceStatus, GlobalModel

# The keys of a row, in table order; README.md names them for scripts using --json.
COLUMNS = (
    "device",
    "state",
    "last_seen",
    "model_version",
    "staleness",
    "updates_sent",
    "accepted",
    "rejected",
    "samples",
    "last_loss",
    "agent_version",
    "error",
    "epsilon",
)
STATES = ("online", "training", "idle", "error", "offline")


def filters(topics: Topics) -> list[str]:
    """The retained topics a fleet view reads."""
    return [
        topics.device_status_filter,
        topics.aggregator_devices_filter,
        topics.aggregator_status,
        topics.model_global_filter,  # the model, or its manifest and chunks
    ]


def _global_model(payload: bytes, chunks: Mapping[int, bytes]) -> GlobalModel:
    """The retained model: ``payload`` itself, or what its manifest's chunks make up."""
    if not is_manifest(payload):
        return GlobalModel.decode(payload)
    manifest = Manifest.decode(payload)
    pieces = ModelChunks()
    pieces.on_manifest(manifest)
    refused = ""
    for index, chunk in sorted(chunks.items()):
        try:
            whole = pieces.on_chunk(index, chunk)
        except WireError as exc:  # a junk chunk topic: the others may still make it up
            refused = f"; chunk {index} refused: {exc}"
            continue
        if whole is not None:
            return GlobalModel.decode(whole)
    raise WireError(
        "chunk_missing",
        f"the retained manifest of v{manifest.version} names {manifest.count} chunks; "
        f"the {len(chunks)} chunk topic(s) retained do not make it up{refused}",
    )


@dataclass
class FleetSnapshot:
    """The decoded retained state of one fleet; undecodable payloads are kept as problems."""

    aggregator: AggregatorStatus | None = None
    model: GlobalModel | None = None
    statuses: dict[str, DeviceStatus] = field(default_factory=dict)
    ledgers: dict[str, DeviceLedger] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # topic -> why it was skipped

    @classmethod
    def from_retained(cls, fleet: str, retained: Mapping[str, bytes]) -> FleetSnapshot:
        snap = cls()
        chunks: dict[int, bytes] = {}
        model: tuple[str, bytes] | None = None
        for topic, payload in sorted(retained.items()):
            try:
                where = parse(topic)
                if where.fleet != fleet:
                    continue
                if where.kind == "model_chunk" and where.index is not None:
                    chunks[where.index] = payload
                elif where.kind == "model_global":
                    model = (topic, payload)  # once every chunk is known
                else:
                    snap._add(where.kind, where.device, payload)
            except (TopicError, WireError) as exc:
                snap.problems[topic] = str(exc)
        if model is not None:
            try:
                snap.model = _global_model(model[1], chunks)
            except WireError as exc:
                snap.problems[model[0]] = str(exc)
        return snap

    def _add(self, kind: str, device: str | None, payload: bytes) -> None:
        if kind == "device_status" and device is not None:
            status = DeviceStatus.decode(payload)
            if status.device != device:
                raise WireError("identity_mismatch", f"status names {status.device!r}")
            self.statuses[device] = status
        elif kind == "aggregator_device" and device is not None:
            self.ledgers[device] = DeviceLedger.decode(payload)
        elif kind == "aggregator_status":
            self.aggregator = AggregatorStatus.decode(payload)

    @property
    def version(self) -> int | None:
        """The current global version: the aggregator's word, else the retained model's."""
        if self.aggregator is not None:
            return self.aggregator.version
        return None if self.model is None else self.model.version

    def rows(self) -> list[dict[str, Any]]:
        devices = sorted(set(self.statuses) | set(self.ledgers))
        return [self.row(d) for d in devices]

    def row(self, device: str) -> dict[str, Any]:
        status, ledger = self.statuses.get(device), self.ledgers.get(device)
        held = None if status is None or status.model_version < 0 else status.model_version
        current = self.version
        seen = [t for t in (status and status.at, ledger and ledger.last_seen) if t]
        return {
            "device": device,
            "state": "offline" if status is None else status.state,
            "last_seen": max(seen) if seen else None,
            "model_version": held,
            "staleness": None if held is None or current is None else max(0, current - held),
            "updates_sent": _sent(status, ledger),
            "accepted": 0 if ledger is None else ledger.accepted,
            "rejected": {} if ledger is None else dict(ledger.rejected),
            "samples": None if status is None else status.samples,
            "last_loss": None if status is None else status.last_loss,
            "agent_version": None if status is None else status.agent_version,
            "error": None if status is None else status.reason,
            "epsilon": None if ledger is None else ledger.epsilon,
        }

    def state_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for row in self.rows():
            counts[row["state"]] = counts.get(row["state"], 0) + 1
        return counts


def _sent(status: DeviceStatus | None, ledger: DeviceLedger | None) -> int | None:
    """Updates sent: seqs start at 0. A last will knows no seq, the aggregator's ledger does."""
    seqs = [s for s in (status and status.last_seq, ledger and ledger.last_seq) if s is not None]
    return max(seqs) + 1 if seqs else None


def select(
    rows: Iterable[dict[str, Any]],
    *,
    state: str | None = None,
    stale_over: int | None = None,
    sort: str = "device",
) -> list[dict[str, Any]]:
    """Filter by state and staleness, then sort by one column (missing values last)."""
    if state is not None and state not in STATES:
        raise ConfigError("bad_flag", f"--state must be one of {', '.join(STATES)}, not {state!r}")
    if sort not in COLUMNS:
        raise ConfigError("bad_flag", f"--sort must be one of {', '.join(COLUMNS)}, not {sort!r}")
    out = [
        r
        for r in rows
        if (state is None or r["state"] == state)
        and (stale_over is None or (r["staleness"] is not None and r["staleness"] > stale_over))
    ]

    def key(row: dict[str, Any]) -> tuple[bool, Any]:
        value = row[sort]
        if isinstance(value, dict):
            value = sum(value.values())
        return (value is None, value if value is not None else 0)

    return sorted(out, key=key)
