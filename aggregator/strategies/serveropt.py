"""Server-side optimizers (Reddi et al. 2021, "Adaptive Federated Optimization").

The aggregated delta ``d`` of a flush is a pseudo-gradient (it points downhill, so the
step adds it). With server learning rate ``eta``:

- ``none``:     ``x <- x + eta * d`` (plain FedBuff)
- ``momentum``: ``m <- beta1 * m + d``; ``x <- x + eta * m`` (FedAvgM)
- ``adam``:     ``m <- beta1 * m + (1 - beta1) * d``; ``v <- beta2 * v + (1 - beta2) * d^2``
- ``yogi``:     as adam but ``v <- v - (1 - beta2) * d^2 * sign(v - d^2)``

and for adam/yogi ``x <- x + eta * m / (sqrt(v) + tau)``, with ``v`` starting at
``tau^2`` as in the paper's Algorithm 2 (no bias correction). All state is float32
tensors so a checkpoint restores it bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fedmq.errors import ConfigError
from fedmq.model import Weights

if TYPE_CHECKING:
    from aggregator.strategies.state import StateReader

SERVER_OPTS = ("none", "momentum", "adam", "yogi")


class ServerOptimizer:
    """Turns one pseudo-gradient into the server's step; holds the moments."""

    def __init__(
        self,
        weights: Mapping[str, np.ndarray],
        opt: str = "none",
        *,
        lr: float = 1.0,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        if opt not in SERVER_OPTS:
            raise ConfigError("bad_param", f"server_opt must be one of {SERVER_OPTS}, got {opt!r}")
        if not 0 <= beta1 < 1 or not 0 <= beta2 < 1:
            raise ConfigError("bad_param", "server_beta1 and server_beta2 must be in [0, 1)")
        if not 0 < tau <= 1:
            raise ConfigError("bad_param", f"server_tau must be in (0, 1], got {tau}")
        self.opt = opt
        self.lr, self.beta1, self.beta2, self.tau = (
            float(lr),
            float(beta1),
            float(beta2),
            float(tau),
        )
        self.m: Weights = {}
        self.v: Weights = {}
        if opt != "none":
            self.m = {k: np.zeros_like(x, dtype=np.float32) for k, x in weights.items()}
        if opt in ("adam", "yogi"):
            self.v = {k: np.full_like(x, self.tau**2, dtype=np.float32) for k, x in weights.items()}

    def params(self) -> dict[str, Any]:
        if self.opt == "none":
            return {"server_opt": "none"}
        out: dict[str, Any] = {"server_opt": self.opt, "server_beta1": self.beta1}
        if self.opt != "momentum":
            out |= {"server_beta2": self.beta2, "server_tau": self.tau}
        return out

    def candidate(
        self, weights: Weights, d: Mapping[str, np.ndarray], factor: float = 1.0
    ) -> tuple[Weights, Any]:
        """The next weights and the moments that go with them, without committing either.

        ``factor`` scales the learning rate for this step (a schedule's); the moments
        take the pseudo-gradient unscaled, so a schedule changes the step, not its memory.

        The caller commits the moments (``commit``) only once the model gate accepts the
        candidate: a refused flush must leave the optimizer as it was.
        """
        eta = np.float32(self.lr * factor)
        if self.opt == "none":
            return {k: (x + eta * d[k]).astype(np.float32) for k, x in weights.items()}, None
        b1 = np.float32(self.beta1)
        if self.opt == "momentum":
            m = {k: (b1 * self.m[k] + d[k]).astype(np.float32) for k in weights}
            return {k: (x + eta * m[k]).astype(np.float32) for k, x in weights.items()}, (m, {})
        b2, tau = np.float32(self.beta2), np.float32(self.tau)
        one = np.float32(1.0)
        m = {k: (b1 * self.m[k] + (one - b1) * d[k]).astype(np.float32) for k in weights}
        v: Weights = {}
        for k in weights:
            sq = (d[k] * d[k]).astype(np.float32)
            if self.opt == "adam":
                v[k] = (b2 * self.v[k] + (one - b2) * sq).astype(np.float32)
            else:
                v[k] = (self.v[k] - (one - b2) * sq * np.sign(self.v[k] - sq)).astype(np.float32)
        new = {
            k: (x + eta * m[k] / (np.sqrt(v[k]) + tau)).astype(np.float32)
            for k, x in weights.items()
        }
        return new, (m, v)

    def commit(self, moments: Any) -> None:
        if moments is not None:
            self.m, self.v = moments

    def state(self) -> dict[str, Any]:
        """The moments (absent for ``none``), for ``Strategy.state``."""
        out: dict[str, Any] = {}
        if self.m:
            out["opt_m"] = self.m
        if self.v:
            out["opt_v"] = self.v
        return out

    def load(self, s: StateReader, like: Mapping[str, np.ndarray]) -> None:
        if self.m:
            self.m = s.tensors("opt_m", like=like)
        if self.v:
            self.v = s.tensors("opt_v", like=like)
