"""Server strategies: one interface (``Strategy``), one module per algorithm.

Defences wrap a strategy instead of living inside it: ``Robust`` screens updates
(non-finite deltas, a norm bound) before any strategy sees them, and ``TrimmedFedBuff``
swaps FedBuff's mean for a coordinate-wise trimmed mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from aggregator.config import StrategyConfig as Defaults
from aggregator.strategies.base import Contribution, Strategy
from aggregator.strategies.claims import ClaimCap
from aggregator.strategies.fedasync import FedAsync, Staleness
from aggregator.strategies.fedavg import FedAvg
from aggregator.strategies.fedbuff import FedBuff
from aggregator.strategies.gate import ModelGate
from aggregator.strategies.robust import NORM_MODES, NormBound, Robust
from aggregator.strategies.trimmed import TrimmedFedBuff
from fedmq.errors import ConfigError

STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (FedAsync, FedBuff, FedAvg)}

# What ``defence=True`` means when a setting is not given (see benchmarks/RESULTS.md).
DEFENCE_DEFAULTS: dict[str, Any] = {
    name: getattr(Defaults, name)
    for name in (
        "norm_factor",
        "norm_mode",
        "norm_window",
        "norm_warmup",
        "norm_abs_factor",
        "norm_abs_floor",
        "sample_cap_factor",
        "trim",
    )
}

__all__ = [
    "DEFENCE_DEFAULTS",
    "STRATEGIES",
    "ClaimCap",
    "Contribution",
    "FedAsync",
    "FedAvg",
    "FedBuff",
    "ModelGate",
    "NormBound",
    "Robust",
    "Staleness",
    "Strategy",
    "TrimmedFedBuff",
    "make_strategy",
]


def make_strategy(
    name: str,
    weights: Mapping[str, np.ndarray],
    version: int = 0,
    *,
    defence: bool = False,
    **params: Any,
) -> Strategy:
    """Build a strategy by name; unknown names and parameters are a ConfigError.

    With ``defence=True`` the strategy is wrapped in ``Robust``: non-finite deltas are
    refused and norms above ``norm_factor`` x the running median are refused
    (``norm_mode="reject"``), clipped (``"clip"``) or let through (``"off"``); until
    enough devices are known the bound is ``norm_abs_factor`` x max(model norm,
    ``norm_abs_floor``). Claimed sample counts are capped at ``sample_cap_factor`` x the
    median claim of the other devices. FedBuff
    also combines its buffer with a trimmed mean dropping ``trim`` at each end per
    coordinate (``trim=0`` keeps FedBuff's sample-weighted mean). ``norm_window`` and
    ``norm_warmup`` shape the median (``NormBound``). A ``None`` parameter is not given.
    """
    if name not in STRATEGIES:
        raise ConfigError(
            "unknown_strategy", f"unknown strategy {name!r}: use one of {sorted(STRATEGIES)}"
        )
    given = {k: params.pop(k) for k in DEFENCE_DEFAULTS if k in params}
    given = {k: v for k, v in given.items() if v is not None}
    if given and not defence:
        raise ConfigError("bad_param", f"{', '.join(given)} only apply with defence=True")
    if given.get("norm_mode", "off") not in ("off", *NORM_MODES):
        raise ConfigError("bad_param", f"norm_mode must be one of {('off', *NORM_MODES)}")
    if "trim" in given and name != "fedbuff":
        raise ConfigError("bad_param", "a trimmed mean needs a buffer: trim applies to fedbuff")
    try:
        if not defence:
            return STRATEGIES[name](weights, version, **params)
        settings = DEFENCE_DEFAULTS | given
        cls = STRATEGIES[name]
        if name == "fedbuff" and settings["trim"] > 0:
            inner: Strategy = TrimmedFedBuff(weights, version, trim=settings["trim"], **params)
        else:
            inner = cls(weights, version, **params)
    except TypeError as exc:
        raise ConfigError("bad_param", f"strategy {name}: {exc}") from exc
    cap = ClaimCap(settings["sample_cap_factor"])
    if settings["norm_mode"] == "off":
        return Robust(inner, claim_cap=cap)
    bound = NormBound(
        settings["norm_factor"],
        settings["norm_mode"],
        window=settings["norm_window"],
        warmup=settings["norm_warmup"],
        abs_factor=settings["norm_abs_factor"],
        abs_floor=settings["norm_abs_floor"],
    )
    return Robust(inner, bound, cap)
