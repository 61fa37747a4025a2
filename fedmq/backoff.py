"""Reconnect delays for the agent and the aggregator."""

from __future__ import annotations

import random


class Backoff:
    """Full-jitter exponential backoff (AWS architecture blog, 2015).

    The n-th delay in a row is uniform in ``[0, min(cap, base * 2**n)]``: a fleet that
    lost its broker does not come back in lockstep.
    """

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.base, self.cap, self.attempt = base, cap, 0
        self.rng = rng or random.Random()

    def next(self) -> float:
        delay = self.rng.uniform(0, min(self.cap, self.base * 2**self.attempt))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
