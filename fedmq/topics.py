"""Every MQTT topic fedmq uses, built and parsed in one place.

All topics live under ``fl/{fleet}/``. A device id is also the device's broker
username, and the ACL (``%u``) lets it write only topics that carry it, so the id
must be a single, literal topic level: no wildcards, no separators, no NUL.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmq.errors import TopicError

ROOT = "fl"
MAX_ID_LEN = 64
_FORBIDDEN = {"+": "a '+' wildcard", "#": "a '#' wildcard", "/": "a '/'", "\0": "a NUL"}


def _validate_level(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TopicError(f"bad_{what}", f"{what.replace('_', ' ')} must be a string")
    if not value:
        raise TopicError(f"bad_{what}", f"{what.replace('_', ' ')} must not be empty")
    if len(value) > MAX_ID_LEN:
        raise TopicError(
            f"bad_{what}",
            f"{what.replace('_', ' ')} {value[:16]!r}... is {len(value)} characters; "
            f"at most {MAX_ID_LEN} are allowed",
        )
    for ch, name in _FORBIDDEN.items():
        if ch in value:
            raise TopicError(f"bad_{what}", f"{what.replace('_', ' ')} {value!r} contains {name}")
    if any(not ch.isprintable() or ch.isspace() for ch in value):
        raise TopicError(
            f"bad_{what}",
            f"{what.replace('_', ' ')} {value!r} contains whitespace or control characters",
        )
    if value.startswith("$"):
        # Brokers reserve topics starting with '$' ($SYS, $share).
        raise TopicError(
            f"bad_{what}", f"{what.replace('_', ' ')} {value!r} must not start with '$'"
        )
    return value


def validate_device_id(device: object) -> str:
    """Return ``device`` if it can be one topic level and a broker username."""
    return _validate_level(device, "device_id")


def validate_fleet(fleet: object) -> str:
    """Return ``fleet`` if it can be one topic level."""
    return _validate_level(fleet, "fleet")


@dataclass(frozen=True)
class Topics:
    """The topic names of one fleet."""

    fleet: str = "default"

    def __post_init__(self) -> None:
        validate_fleet(self.fleet)

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{self.fleet}"

    @property
    def model_global(self) -> str:
        return f"{self.prefix}/model/global"

    def model_chunk(self, index: int) -> str:
        """Where chunk ``index`` of a chunked global model is retained (fedmq.chunks)."""
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise TopicError("bad_topic", f"chunk index {index!r} must be an int >= 0")
        return f"{self.model_global}/{index}"

    @property
    def model_global_filter(self) -> str:
        """The global model and its chunks: ``#`` also matches ``model/global`` itself."""
        return f"{self.model_global}/#"

    @property
    def model_onnx(self) -> str:
        return f"{self.prefix}/model/onnx"

    def update(self, device: str) -> str:
        return f"{self.prefix}/updates/{validate_device_id(device)}"

    @property
    def updates_filter(self) -> str:
        return f"{self.prefix}/updates/+"

    def device_status(self, device: str) -> str:
        return f"{self.prefix}/devices/{validate_device_id(device)}/status"

    @property
    def aggregator_status(self) -> str:
        return f"{self.prefix}/aggregator/status"

    @property
    def aggregator_history(self) -> str:
        return f"{self.prefix}/aggregator/history"

    @property
    def device_status_filter(self) -> str:
        return f"{self.prefix}/devices/+/status"

    def aggregator_device(self, device: str) -> str:
        return f"{self.prefix}/aggregator/devices/{validate_device_id(device)}"

    @property
    def aggregator_devices_filter(self) -> str:
        return f"{self.prefix}/aggregator/devices/+"

    def stats(self, device: str) -> str:
        return f"{self.prefix}/stats/{validate_device_id(device)}"

    @property
    def stats_filter(self) -> str:
        return f"{self.prefix}/stats/+"


@dataclass(frozen=True)
class ParsedTopic:
    """What a topic is: ``kind`` is one of KINDS; ``device`` is set for per-device topics."""

    kind: str
    fleet: str
    device: str | None = None
    index: int | None = None  # of a model_chunk


KINDS = (
    "model_global",
    "model_chunk",
    "model_onnx",
    "update",
    "device_status",
    "aggregator_status",
    "aggregator_history",
    "aggregator_device",
    "stats",
)


def _canonical_index(level: str) -> bool:
    """A chunk index level: decimal digits, no leading zero, below 10000."""
    return level.isascii() and level.isdigit() and len(level) <= 4 and level == str(int(level))


def parse(topic: str) -> ParsedTopic:
    """Parse a concrete fedmq topic; raise TopicError for anything else."""
    if not isinstance(topic, str):
        raise TopicError("bad_topic", "a topic must be a string")
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != ROOT:
        raise TopicError("bad_topic", f"{topic!r} is not a fedmq topic (fl/<fleet>/...)")
    fleet = validate_fleet(parts[1])
    rest = parts[2:]
    match rest:
        case ["model", "global"]:
            return ParsedTopic("model_global", fleet)
        case ["model", "global", index] if _canonical_index(index):
            return ParsedTopic("model_chunk", fleet, index=int(index))
        case ["model", "onnx"]:
            return ParsedTopic("model_onnx", fleet)
        case ["updates", device]:
            return ParsedTopic("update", fleet, validate_device_id(device))
        case ["devices", device, "status"]:
            return ParsedTopic("device_status", fleet, validate_device_id(device))
        case ["aggregator", "status"]:
            return ParsedTopic("aggregator_status", fleet)
        case ["aggregator", "history"]:
            return ParsedTopic("aggregator_history", fleet)
        case ["aggregator", "devices", device]:
            return ParsedTopic("aggregator_device", fleet, validate_device_id(device))
        case ["stats", device]:
            return ParsedTopic("stats", fleet, validate_device_id(device))
    raise TopicError("bad_topic", f"{topic!r} is not a fedmq topic")
