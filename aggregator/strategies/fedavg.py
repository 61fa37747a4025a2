"""Synchronous FedAvg (McMahan et al. 2017): the baseline every comparison is made against.

Round ``r`` serves version ``r``. Only updates trained on that version count; the round
closes when ``clients_per_round`` have reported, or when the driver calls ``flush()`` at
the round's deadline. The new model is the sample-weighted mean of the round's
local models: ``x <- x + eta_g * sum(n_i delta_i) / sum(n_i)``, ``eta_g`` times a
learning-rate schedule's factor (``aggregator.strategies.schedule``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from aggregator.config import StrategyConfig as Defaults
from aggregator.strategies.base import MAX_SERVER_LR, Contribution, Strategy, quiet
from aggregator.strategies.schedule import Schedule
from fedmq.errors import ConfigError, UpdateRejected

if TYPE_CHECKING:
    from aggregator.strategies.state import StateReader


class FedAvg(Strategy):
    name = "fedavg"
    state_name = "fedavg"

    def __init__(
        self,
        weights: Mapping[str, np.ndarray],
        version: int = 0,
        *,
        clients_per_round: int = Defaults.clients_per_round,
        server_lr: float = Defaults.server_lr,
        server_lr_schedule: str = Defaults.server_lr_schedule,
    ) -> None:
        super().__init__(weights, version)
        if clients_per_round < 1:
            raise ConfigError("bad_param", "clients_per_round must be >= 1")
        # A server step beyond 100x the mean delta is a typo or a damaged checkpoint.
        if not 0 < server_lr <= MAX_SERVER_LR:
            raise ConfigError(
                "bad_param", f"server_lr must be in (0, {MAX_SERVER_LR:g}], got {server_lr}"
            )
        self.clients_per_round = int(clients_per_round)
        self.server_lr = float(server_lr)
        self.schedule = Schedule.parse(server_lr_schedule)
        self._round: dict[str, tuple[int, Mapping[str, np.ndarray]]] = {}

    @property
    def pending(self) -> int:
        return len(self._round)

    def apply(self, c: Contribution) -> bool:
        tau = self.staleness(c)
        if tau != 0:
            raise UpdateRejected(
                "late_for_round",
                f"update trained on version {c.base_version}, round {self._version} is open",
                device=c.device,
                staleness=tau,
            )
        key = c.device or f"#{len(self._round)}"
        if key in self._round:
            raise UpdateRejected(
                "duplicate_in_round",
                f"device {c.device} already reported this round",
                device=c.device,
            )
        self._round[key] = (c.num_samples, c.delta)
        if len(self._round) >= self.clients_per_round:
            return self.flush()
        return False

    def flush(self) -> bool:
        if not self._round:
            return False
        total = float(sum(n for n, _ in self._round.values()))
        eta = self.server_lr * self.schedule.factor(self._version)
        new = {}
        with quiet():
            for name, x in self._weights.items():
                mean = sum(
                    (np.float32(n / total) * d[name] for n, d in self._round.values()),
                    np.zeros_like(x),
                )
                new[name] = (x + np.float32(eta) * mean).astype(np.float32)
        try:
            self._publish(new)
        finally:  # a refused candidate takes its round with it (see Strategy)
            self.discard_pending()
        return True

    def discard_pending(self) -> None:
        self._round.clear()

    def params(self) -> dict[str, Any]:
        return {
            "clients_per_round": self.clients_per_round,
            "server_lr": self.server_lr,
            **self.schedule.params(),
        }

    def _buffers(self) -> dict[str, Any]:
        return {
            "round": [
                {"device": key, "samples": n, "delta": dict(delta)}
                for key, (n, delta) in self._round.items()
            ]
        }

    def _load_buffers(self, s: StateReader) -> None:
        for e in s.items("round", self.clients_per_round - 1):
            key = e.text("device")
            if key in self._round:
                raise s.bad("round", f"names {key!r} twice")
            self._round[key] = (e.integer("samples", lo=1), e.tensors("delta", like=self._weights))
