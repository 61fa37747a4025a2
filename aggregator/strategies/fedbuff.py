"""FedBuff (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation").

Deltas are buffered; each is scaled by ``1 / sqrt(1 + tau)`` and weighted by its
sample count. When ``k`` have arrived: ``x <- x + eta_g * weighted_mean``, version += 1
(``eta_g`` times a schedule's factor, ``aggregator.strategies.schedule``), or, with
``server_opt``, the mean is a pseudo-gradient for server momentum, FedAdam or FedYogi
(``aggregator.strategies.serveropt``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from aggregator.config import StrategyConfig as Defaults
from aggregator.strategies.base import MAX_SERVER_LR, Contribution, Strategy, quiet
from aggregator.strategies.schedule import Schedule
from aggregator.strategies.serveropt import ServerOptimizer
from fedmq.errors import ConfigError, UpdateRejected
from fedmq.model import Weights

if TYPE_CHECKING:
    from aggregator.strategies.state import StateReader


@dataclass(frozen=True)
class Buffered:
    """One delta waiting in the buffer: its staleness scale, sample count and sparsity."""

    scale: float
    samples: int
    delta: Mapping[str, np.ndarray]
    sparse: bool = False


class FedBuff(Strategy):
    name = "fedbuff"
    state_name = "fedbuff"

    def __init__(
        self,
        weights: Mapping[str, np.ndarray],
        version: int = 0,
        *,
        k: int = Defaults.k,
        server_lr: float = Defaults.server_lr,
        server_lr_schedule: str = Defaults.server_lr_schedule,
        max_staleness: int = Defaults.max_staleness,
        server_opt: str = Defaults.server_opt,
        server_beta1: float = Defaults.server_beta1,
        server_beta2: float = Defaults.server_beta2,
        server_tau: float = Defaults.server_tau,
    ) -> None:
        super().__init__(weights, version)
        if k < 1:
            raise ConfigError("bad_param", f"FedBuff buffer size k must be >= 1, got {k}")
        # A server step beyond 100x the mean delta is a typo or a damaged checkpoint.
        if not 0 < server_lr <= MAX_SERVER_LR:
            raise ConfigError(
                "bad_param", f"FedBuff server_lr must be in (0, {MAX_SERVER_LR:g}], got {server_lr}"
            )
        if max_staleness < 0:
            raise ConfigError("bad_param", "max_staleness must be >= 0")
        self.k = int(k)
        self.server_lr = float(server_lr)
        self.schedule = Schedule.parse(server_lr_schedule)
        self.max_staleness = int(max_staleness)
        self._buffer: list[Buffered] = []
        self.opt = ServerOptimizer(
            self._weights,
            server_opt,
            lr=self.server_lr,
            beta1=server_beta1,
            beta2=server_beta2,
            tau=server_tau,
        )
        self.online: int | None = None

    @property
    def k_eff(self) -> int:
        """A small fleet fills a buffer of its own size, not of ``k``: min(k, max(1, online))."""
        return self.k if self.online is None else min(self.k, max(1, self.online))

    def set_online(self, online: int | None) -> None:
        self.online = None if online is None else max(0, int(online))

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def apply(self, c: Contribution) -> bool:
        tau = self.staleness(c)
        if tau > self.max_staleness:
            raise UpdateRejected(
                "too_stale",
                f"update is {tau} versions old; the limit is {self.max_staleness}",
                device=c.device,
                staleness=tau,
            )
        self._buffer.append(Buffered(1.0 / np.sqrt(1.0 + tau), c.num_samples, c.delta, c.sparse))
        if len(self._buffer) >= self.k_eff:
            return self.flush()
        return False

    def combine(self) -> dict[str, np.ndarray]:
        """The sample-weighted mean of the staleness-scaled buffered deltas."""
        total = float(sum(b.samples for b in self._buffer))
        return {
            name: sum(
                (np.float32(b.scale * b.samples / total) * b.delta[name] for b in self._buffer),
                np.zeros_like(x),
            ).astype(np.float32)
            for name, x in self._weights.items()
        }

    def flush(self) -> bool:
        if not self._buffer:
            return False
        with quiet():
            factor = self.schedule.factor(self._version)
            candidate, moments = self.opt.candidate(self._weights, self.combine(), factor)
        try:
            self._publish(candidate)
            self.opt.commit(moments)
        finally:  # a refused candidate takes its buffer with it (see Strategy)
            self.discard_pending()
        return True

    def discard_pending(self) -> None:
        self._buffer.clear()

    def params(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "server_lr": self.server_lr,
            **self.schedule.params(),
            "max_staleness": self.max_staleness,
            **self.opt.params(),
        }

    def _remap_buffers(self, fn: Callable[[Mapping[str, np.ndarray]], Weights]) -> None:
        self._buffer = [replace(b, delta=fn(b.delta)) for b in self._buffer]
        if self.opt.m:  # the first moment is a sum of deltas: it maps as they do
            self.opt.m = fn(self.opt.m)

    def _buffers(self) -> dict[str, Any]:
        return {
            "online": -1 if self.online is None else self.online,
            "buffer": [
                {"scale": float(b.scale), "samples": b.samples, "delta": dict(b.delta)}
                | ({"sparse": 1} if b.sparse else {})
                for b in self._buffer
            ],
            **self.opt.state(),
        }

    def _load_buffers(self, s: StateReader) -> None:
        # A checkpoint of an earlier fedmq has no "online": the fleet size is unknown.
        online = s.integer("online", lo=-1) if "online" in s.body else -1
        self.online = None if online < 0 else online
        # "sparse" is absent from a checkpoint of an earlier fedmq and for a dense delta.
        self._buffer = [
            Buffered(
                e.number("scale"),
                e.integer("samples", lo=1),
                e.tensors("delta", like=self._weights),
                "sparse" in e.body and e.integer("sparse") == 1,
            )
            for e in s.items("buffer", self.k - 1)
        ]
        self.opt.load(s, self._weights)
