"""The last check before a candidate model becomes the global one.

Screens on updates (``robust``) judge one delta at a time; the gate judges their
result, so whatever slips past them (a combination of updates, a bug, a bad server
learning rate) still never reaches the devices. A candidate is refused when:

- any weight is NaN or infinite;
- any ``|w|`` exceeds ``max_weight`` (float32 has room up to 3e38, and a model whose
  weights reach 1e6 has diverged long before);
- with an evaluation set, its loss is not finite or exceeds
  ``loss_factor`` × the last good loss + ``loss_margin``: noisy asynchronous steps move
  the loss a little, a poisoned or diverged model moves it a lot.

The strategy then keeps its last good weights and version (see ``Strategy``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedmq.errors import ConfigError, UpdateRejected

# The candidate's loss on the aggregator's evaluation set.
Evaluate = Callable[[Mapping[str, np.ndarray]], float]


class ModelGate:
    def __init__(
        self,
        *,
        max_weight: float = 1e6,
        evaluate: Evaluate | None = None,
        loss_factor: float = 2.0,
        loss_margin: float = 1.0,
    ) -> None:
        if not (math.isfinite(max_weight) and max_weight > 0):
            raise ConfigError("bad_param", f"gate max_weight must be > 0, got {max_weight}")
        if not (math.isfinite(loss_factor) and loss_factor >= 1):
            raise ConfigError("bad_param", f"gate loss_factor must be >= 1, got {loss_factor}")
        if not (math.isfinite(loss_margin) and loss_margin >= 0):
            raise ConfigError("bad_param", f"gate loss_margin must be >= 0, got {loss_margin}")
        self.max_weight = float(max_weight)
        self.evaluate = evaluate
        self.loss_factor = float(loss_factor)
        self.loss_margin = float(loss_margin)
        self.last_good_loss: float | None = None

    def check(self, weights: Mapping[str, np.ndarray], *, version: int) -> None:
        """Refuse the candidate (``UpdateRejected("model_rejected")``) or remember it as good."""
        largest = max((float(np.max(np.abs(w))) for w in weights.values() if w.size), default=0.0)
        if not math.isfinite(largest):
            self._refuse(version, "it holds NaN or infinity")
        if largest > self.max_weight:
            self._refuse(version, f"max |w| {largest:.3g} exceeds {self.max_weight:.3g}")
        if self.evaluate is None:
            return
        value = float(self.evaluate(weights))
        good = self.last_good_loss
        if not math.isfinite(value):
            self._refuse(version, "its evaluation loss is not finite")
        if good is not None and value > self.loss_factor * good + self.loss_margin:
            self._refuse(
                version,
                f"its evaluation loss {value:.4g} exploded against the last good {good:.4g}",
            )
        self.last_good_loss = value

    def _refuse(self, version: int, why: str) -> None:
        raise UpdateRejected("model_rejected", f"candidate model v{version} refused: {why}")

    def params(self) -> dict[str, Any]:
        return {
            "gate_max_weight": self.max_weight,
            "gate_loss_factor": self.loss_factor,
            "gate_loss_margin": self.loss_margin,
        }
