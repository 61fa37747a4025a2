"""Server strategies: one interface (``Strategy``), one module per algorithm."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from aggregator.strategies.base import Contribution, Strategy
from aggregator.strategies.fedasync import FedAsync, Staleness
from aggregator.strategies.fedavg import FedAvg
from aggregator.strategies.fedbuff import FedBuff
from fedmq.errors import ConfigError

STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (FedAsync, FedBuff, FedAvg)}

__all__ = [
    "STRATEGIES",
    "Contribution",
    "FedAsync",
    "FedAvg",
    "FedBuff",
    "Staleness",
    "Strategy",
    "make_strategy",
]


def make_strategy(
    name: str, weights: Mapping[str, np.ndarray], version: int = 0, **params: Any
) -> Strategy:
    """Build a strategy by name; unknown names and parameters are a ConfigError."""
    if name not in STRATEGIES:
        raise ConfigError(
            "unknown_strategy", f"unknown strategy {name!r}: use one of {sorted(STRATEGIES)}"
        )
    try:
        return STRATEGIES[name](weights, version, **params)
    except TypeError as exc:
        raise ConfigError("bad_param", f"strategy {name}: {exc}") from exc
