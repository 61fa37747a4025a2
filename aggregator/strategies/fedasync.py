"""FedAsync (Xie, Koyejo, Gupta 2019, "Asynchronous Federated Optimization").

Every accepted update makes a new version: ``x <- (1 - a_t) x + a_t x_new`` with
``a_t = alpha * f(t) * s(t - tau)``, ``f`` a learning-rate schedule (constant unless
set, ``aggregator.strategies.schedule``). Devices send deltas against the version they
trained on, so ``x_new = x_tau + delta``; the strategy keeps the last
``max_staleness + 1`` versions to rebuild it (cheap for the small models devices train).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from aggregator.config import StrategyConfig as Defaults
from aggregator.strategies.base import Contribution, Strategy, quiet
from aggregator.strategies.schedule import Schedule
from fedmq.errors import ConfigError, UpdateRejected
from fedmq.model import Weights
from fedmq.spec import parse_spec

if TYPE_CHECKING:
    from aggregator.strategies.state import StateReader


@dataclass(frozen=True)
class Staleness:
    """The staleness function ``s``: ``constant``, ``poly`` (a) or ``hinge`` (a, b).

    poly:  s(d) = (d + 1) ** -a
    hinge: s(d) = 1 if d <= b else 1 / (a (d - b) + 1)
    """

    kind: str = "poly"
    a: float = 0.5
    b: float = 4.0

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "poly", "hinge"):
            raise ConfigError("bad_staleness", f"unknown staleness function {self.kind!r}")
        if self.a < 0 or self.b < 0 or not np.isfinite(self.a) or not np.isfinite(self.b):
            raise ConfigError("bad_staleness", "staleness parameters a and b must be >= 0")

    def __call__(self, d: int) -> float:
        if self.kind == "constant":
            return 1.0
        if self.kind == "poly":
            return float((d + 1) ** -self.a)
        return 1.0 if d <= self.b else 1.0 / (self.a * (d - self.b) + 1.0)

    @classmethod
    def parse(cls, spec: str) -> Staleness:
        """``constant`` | ``poly:A`` | ``hinge:A,B``."""
        name, nums, _ = parse_spec(spec) or ("", (), "")
        forms = {"constant": 0, "poly": 1, "hinge": 2}
        if forms.get(name) != len(nums):
            raise ConfigError(
                "bad_staleness",
                f"bad staleness {spec!r}: use constant, poly:A or hinge:A,B (e.g. poly:0.5)",
            )
        return cls(name, *nums)

    def spec(self) -> str:
        """Like ``str()`` but exact: ``parse(s.spec())`` behaves as ``s`` does, bit for bit."""
        if self.kind == "constant":
            return "constant"
        return f"poly:{self.a!r}" if self.kind == "poly" else f"hinge:{self.a!r},{self.b!r}"

    def __str__(self) -> str:
        if self.kind == "constant":
            return "constant"
        return f"poly:{self.a:g}" if self.kind == "poly" else f"hinge:{self.a:g},{self.b:g}"


class FedAsync(Strategy):
    name = "fedasync"
    state_name = "fedasync"

    def __init__(
        self,
        weights: Mapping[str, np.ndarray],
        version: int = 0,
        *,
        alpha: float = Defaults.alpha,
        staleness: Staleness | str = Defaults.staleness,
        max_staleness: int = Defaults.max_staleness,
        server_lr_schedule: str = Defaults.server_lr_schedule,
    ) -> None:
        super().__init__(weights, version)
        if not 0 < alpha <= 1:
            raise ConfigError("bad_param", f"FedAsync alpha must be in (0, 1], got {alpha}")
        if max_staleness < 0:
            raise ConfigError("bad_param", "max_staleness must be >= 0")
        self.alpha = float(alpha)
        if isinstance(staleness, str):
            staleness = Staleness.parse(staleness)
        if not isinstance(staleness, Staleness):
            raise ConfigError("bad_staleness", f"staleness must be a spec, got {staleness!r}")
        self.s = staleness
        self.schedule = Schedule.parse(server_lr_schedule)
        self.max_staleness = int(max_staleness)
        self._history: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict(
            [(self._version, self._weights)]
        )

    def _remap_buffers(self, fn: Callable[[Mapping[str, np.ndarray]], Weights]) -> None:
        # The bases of stale updates, in the new parameterization, and the new version's.
        self._history = OrderedDict((v, fn(w)) for v, w in self._history.items())
        self._history[self._version + 1] = self._weights
        while len(self._history) > self.max_staleness + 1:
            self._history.popitem(last=False)

    def mixing(self, staleness: int) -> float:
        """``a_t``: alpha, times the schedule's factor at this version, times ``s(staleness)``."""
        return self.alpha * self.schedule.factor(self._version) * self.s(staleness)

    def apply(self, c: Contribution) -> bool:
        tau = self.staleness(c)
        if tau > self.max_staleness or c.base_version not in self._history:
            raise UpdateRejected(
                "too_stale",
                f"update is {tau} versions old; the limit is {self.max_staleness}",
                device=c.device,
                staleness=tau,
            )
        a = np.float32(self.mixing(tau))
        base = self._history[c.base_version]
        with quiet():
            new = {
                k: ((1 - a) * x + a * (base[k] + c.delta[k])).astype(np.float32)
                for k, x in self._weights.items()
            }
        self._publish(new)
        self._history[self._version] = new
        while len(self._history) > self.max_staleness + 1:
            self._history.popitem(last=False)
        return True

    def params(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "staleness": str(self.s),
            "max_staleness": self.max_staleness,
            **self.schedule.params(),
        }

    def init_params(self) -> dict[str, Any]:
        return {**self.params(), "staleness": self.s.spec()}

    def _buffers(self) -> dict[str, Any]:
        older = [(v, w) for v, w in self._history.items() if v != self._version]
        return {"history": [{"version": v, "weights": w} for v, w in older]}

    def _load_buffers(self, s: StateReader) -> None:
        history: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        for entry in s.items("history", self.max_staleness):
            v = entry.integer("version")
            if v >= self._version or (history and v <= next(reversed(history))):
                raise s.bad("history", "versions must increase up to the current one")
            history[v] = entry.tensors("weights", like=self._weights)
        history[self._version] = self._weights
        self._history = history
