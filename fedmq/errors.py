"""Every error a user (or a device on the network) can cause.

Each class carries a stable ``reason`` code and a sentence. Library errors are
translated at the boundary with ``raise ... from exc``; the CLI maps each class to
one exit status (``exit_code``) and prints one line.
"""

from __future__ import annotations

from typing import Any


class FedmqError(Exception):
    """Raised for any failure fedmq reports to a user; the base of all others."""

    exit_code = 1

    def __init__(self, reason: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.fields = fields

    def __str__(self) -> str:
        return f"{self.message} [{self.reason}]"

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's own pickling passes only args, which lack the reason: an error
        # raised in a worker process (a benchmark's pool) could not be unpickled.
        return _rebuild, (type(self), self.reason, self.message, self.fields)


def _rebuild(cls: type[FedmqError], reason: str, message: str, fields: dict[str, Any]) -> Any:
    return cls(reason, message, **fields)


class WireError(FedmqError, ValueError):
    """Raised when bytes or a message do not follow wire format v1."""

    exit_code = 3


class TopicError(FedmqError, ValueError):
    """Raised when a topic, fleet name or device id is not valid."""

    exit_code = 4


class ConfigError(FedmqError, ValueError):
    """Raised when a config file, environment variable or flag is not valid."""

    exit_code = 2


class DataError(FedmqError, ValueError):
    """Raised when a data file cannot be read as features and labels."""

    exit_code = 5


class ModelError(FedmqError, ValueError):
    """Raised when weights do not fit an architecture, or an architecture is invalid."""

    exit_code = 6


class UpdateRejected(FedmqError):
    """Raised when a strategy or validator refuses an update; ``reason`` says why."""

    exit_code = 7

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        device: str | None = None,
        staleness: int | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(reason, message, device=device, staleness=staleness, **fields)
        self.device = device
        self.staleness = staleness


class BrokerError(FedmqError):
    """Raised when the MQTT broker cannot be reached, started or authenticated against."""

    exit_code = 8


class StorageError(FedmqError):
    """Raised when a service cannot write its own files: a full disk, a read-only or
    failing file system. Restarting does not help until an operator frees space."""

    exit_code = 3
