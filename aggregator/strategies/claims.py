"""A cap on the sample counts devices claim, so no claim buys a fleet's weight.

FedBuff and FedAvg weight each delta by the ``num_samples`` its sender claims, and the
wire allows up to 2³¹−1: one device claiming that much takes almost all the weight. The
cap is ``factor`` × the median of the latest claim of each *other* device heard from
(recent ``window`` devices), so a liar cannot raise its own cap; with no other device
known there is nothing to outweigh and the claim passes. An honest device with a larger
shard than most loses some weight above the cap, nothing more.
"""

from __future__ import annotations

import math
import statistics
from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from aggregator.config import StrategyConfig as Defaults
from aggregator.strategies.base import Contribution
from fedmq.errors import ConfigError

if TYPE_CHECKING:
    from aggregator.strategies.state import StateReader


class ClaimCap:
    """Clamp ``num_samples`` to ``factor`` × the median claim of the other recent devices."""

    def __init__(
        self, factor: float = Defaults.sample_cap_factor, *, window: int = Defaults.norm_window
    ) -> None:
        if not (math.isfinite(factor) and factor >= 1):
            raise ConfigError("bad_param", f"sample cap factor must be >= 1, got {factor}")
        if window < 1:
            raise ConfigError("bad_param", "sample cap window must be >= 1")
        self.factor = float(factor)
        self.window = int(window)
        self._claims: OrderedDict[str, int] = OrderedDict()  # device -> latest claim

    def cap(self, device: str) -> int | None:
        """The largest claim that ``device`` may make now (None: no other device known)."""
        others = [n for d, n in self._claims.items() if d != device]
        if not others:
            return None
        return max(1, math.floor(self.factor * statistics.median(others)))

    def screen(self, c: Contribution) -> Contribution:
        """The contribution with its claim capped (unchanged when under the cap)."""
        cap = self.cap(c.device)
        if cap is None or c.num_samples <= cap:
            return c
        return replace(c, num_samples=cap)

    def record(self, c: Contribution) -> None:
        """Remember the claim of an accepted update (the raw claim: it is the device's word)."""
        if not c.device:
            return
        self._claims.pop(c.device, None)
        self._claims[c.device] = int(c.num_samples)
        if len(self._claims) > self.window:
            self._claims.popitem(last=False)

    def params(self) -> dict[str, Any]:
        return {"sample_cap_factor": self.factor}

    def state(self) -> dict[str, Any]:
        return {
            "params": {"factor": self.factor, "window": self.window},
            "claims": [{"device": d, "samples": n} for d, n in self._claims.items()],
        }

    @classmethod
    def from_state(cls, s: StateReader) -> ClaimCap:
        cap = cls(**s.params("params"))
        cap._claims.update(s.per_device("claims", cap.window, lambda e: e.integer("samples", 1)))
        return cap
