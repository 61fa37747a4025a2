"""FedBuff with a coordinate-wise trimmed mean (Yin et al. 2018, "Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates").

Buffering and staleness are FedBuff's: each delta is scaled by ``1 / sqrt(1 + tau)``.
On flush, for every coordinate the ``floor(trim * n)`` largest and smallest of the
``n`` buffered values are dropped and the rest averaged, so a minority of extreme
updates cannot move any coordinate beyond the honest range.

The mean is unweighted: ``num_samples`` is the device's own claim, and weighting by it
would let one device that claims a huge data set outvote the trim.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from aggregator.config import StrategyConfig as Defaults
from aggregator.strategies.fedbuff import FedBuff
from fedmq.errors import ConfigError


def trimmed_mean(stack: np.ndarray, trim: float) -> np.ndarray:
    """Mean over axis 0 after dropping the ``floor(trim * n)`` extremes at each end.

    At least one value per coordinate is always kept.
    """
    n = stack.shape[0]
    cut = min(math.floor(trim * n), (n - 1) // 2)
    if cut == 0:
        return stack.mean(axis=0)
    kept = np.sort(stack, axis=0)[cut : n - cut]
    return kept.mean(axis=0)


class TrimmedFedBuff(FedBuff):
    """FedBuff whose ``combine`` is a coordinate-wise trimmed mean; ``trim`` in [0, 0.5)."""

    state_name = "trimmed_fedbuff"

    def __init__(
        self,
        weights: Mapping[str, np.ndarray],
        version: int = 0,
        *,
        trim: float = Defaults.trim,
        **kw: Any,
    ) -> None:
        super().__init__(weights, version, **kw)
        if not 0 <= trim < 0.5:
            raise ConfigError("bad_param", f"trimmed-mean fraction must be in [0, 0.5), got {trim}")
        self.trim = float(trim)

    def combine(self) -> dict[str, np.ndarray]:
        return {
            name: trimmed_mean(
                np.stack([np.float32(scale) * delta[name] for scale, _, delta in self._buffer]),
                self.trim,
            ).astype(np.float32)
            for name in self._weights
        }

    def params(self) -> dict[str, Any]:
        return {**super().params(), "trim": self.trim}
