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

The last good loss is always the loss of the current global model: ``start`` sets it
from the model a federation starts or resumes from, and every candidate that passes
becomes the model. A restarted aggregator therefore judges the next candidate exactly
as the one before the restart would have. The daemon evaluates on at most
``EVAL_ROWS`` rows of its evaluation set, since the gate runs on every candidate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fedmq.errors import ConfigError, UpdateRejected
from fedmq.model import Arch, loss

if TYPE_CHECKING:
    from fedmq.data import Dataset
    from fedmq.preprocess import Standardizer

# The candidate's loss on the aggregator's evaluation set.
Evaluate = Callable[[Mapping[str, np.ndarray]], float]

EVAL_ROWS = 512


class HasPrep(Protocol):
    @property
    def current(self) -> Standardizer: ...


def eval_loss(
    arch: Arch, evalset: Dataset, rows: int = EVAL_ROWS, prep: HasPrep | None = None
) -> Evaluate:
    """The loss on the first ``rows`` rows of ``evalset`` (always the same rows).

    With ``prep`` (the intake's standardization) the raw rows go through its current
    preprocessing first, as the model's weights expect.
    """
    x, y = evalset.x[:rows], evalset.y[:rows]
    if prep is None:
        return lambda weights: loss(arch, weights, x, y)
    return lambda weights: loss(arch, weights, prep.current.apply(x), y)


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
        with np.errstate(invalid="ignore"):
            largest = max(
                (float(np.max(np.abs(w))) for w in weights.values() if w.size), default=0.0
            )
        if not math.isfinite(largest):
            self._refuse(version, "it holds NaN or infinity")
        if largest > self.max_weight:
            self._refuse(version, f"max |w| {largest:.3g} exceeds {self.max_weight:.3g}")
        if self.evaluate is None:
            return
        value = self._loss(weights)
        good = self.last_good_loss
        if not math.isfinite(value):
            self._refuse(version, "its evaluation loss is not finite")
        if good is not None and value > self.loss_factor * good + self.loss_margin:
            self._refuse(
                version,
                f"its evaluation loss {value:.4g} exploded against the last good {good:.4g}",
            )
        self.last_good_loss = value

    def start(self, weights: Mapping[str, np.ndarray]) -> None:
        """Take ``weights`` (the current global model) as the last good one."""
        if self.evaluate is not None:
            value = self._loss(weights)
            self.last_good_loss = value if math.isfinite(value) else None

    def _loss(self, weights: Mapping[str, np.ndarray]) -> float:
        with np.errstate(all="ignore"):  # a diverged candidate overflows; it is refused below
            return float(self.evaluate(weights)) if self.evaluate is not None else math.nan

    def _refuse(self, version: int, why: str) -> None:
        raise UpdateRejected("model_rejected", f"candidate model v{version} refused: {why}")

    def params(self) -> dict[str, Any]:
        return {
            "gate_max_weight": self.max_weight,
            "gate_loss_factor": self.loss_factor,
            "gate_loss_margin": self.loss_margin,
        }
