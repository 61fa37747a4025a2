"""Defences as a wrapper around any strategy (the way Flower wraps DP around a strategy).

``Robust(inner, NormBound())`` screens each contribution before ``inner.apply`` sees it:

- a delta holding NaN or infinity is refused (``non_finite``) — in-process callers can
  bypass the wire decoder, which refuses them already;
- ``NormBound`` compares the delta's L2 norm with ``factor`` times the median of the
  latest accepted norm of each of the last ``window`` devices heard from, and refuses
  (``norm_bound``) or clips what exceeds it.

Until ``warmup`` devices are known (a new fleet, or one of four devices or fewer) the
bound is absolute instead, relative to the model: ``abs_factor × max(‖x‖, abs_floor)``
with ``x`` the current global weights. An honest delta is a small step from ``x`` (on
digits, under 0.15 ‖x‖), so a factor of 4 refuses nothing honest while a delta of 1e30
never reaches the model; the floor keeps a model that starts near zero (linreg) trainable.

The median adapts as training moves on (norms shrink as the model converges). One entry
per device, not per update, because in an asynchronous fleet the fastest devices send
most updates: a per-update window is set by them, and a fast device whose data the model
already fits sends tiny deltas that drag the bound down onto honest, slower devices with
unusual data. As long as fewer than half of the devices in the window are hostile, the
median is an honest one. Only updates the inner strategy accepted enter the window, so
refused ones cannot drag the bound upwards.

Under a DP policy (``set_dp``: the fleet's hyper has clip C and noise z) the bound is
the policy's instead (``aggregator.strategies.dpbound``): noise dominates every honest
update's norm, so the median says nothing about who is honest, while the policy says
exactly how long an honest update can be. Norms are then not recorded, so the median
a fleet falls back to without DP is not one of noised updates.

Rejecting is the default: a clipped update still moves the model ``factor`` honest norms
in whatever direction the sender chose (clipped sign-flipped updates from 20 % of a
fleet cost FedBuff 6 points of accuracy at factor 3 in ``benchmarks/attacks.py``;
refused, under 1).
The price is that an honest device with persistently unusual data can be refused again
and again; ``factor`` 4 keeps that to a few percent of updates (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
import statistics
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from aggregator.config import StrategyConfig as Defaults
from aggregator.strategies.base import Contribution, Strategy
from aggregator.strategies.claims import ClaimCap
from aggregator.strategies.dpbound import DpBound
from aggregator.strategies.gate import ModelGate
from fedmq.errors import ConfigError, UpdateRejected
from fedmq.model import Weights, global_norm

if TYPE_CHECKING:
    from aggregator.strategies.state import StateReader

NORM_MODES = ("reject", "clip")


def finite_norm(c: Contribution) -> float:
    """The delta's L2 norm; ``UpdateRejected("non_finite")`` if any value is NaN or ±inf.

    The float64 sum of squares of float32 values cannot overflow, so the norm is finite
    exactly when every value is.
    """
    norm = global_norm(c.delta)
    if not math.isfinite(norm):
        raise UpdateRejected("non_finite", "delta holds NaN or infinity", device=c.device or None)
    return norm


class NormBound:
    """Refuse (or clip) deltas whose norm exceeds ``factor`` × the running median norm.

    The median is over the latest accepted norm of each of the last ``window`` devices.
    Until ``warmup`` devices are in the window (a median of fewer is too easy for one
    early outlier to set) the bound is ``abs_factor × max(‖x‖, abs_floor)`` instead.
    With a DP policy (``dp_clip`` > 0) it is the policy's (``DpBound``) throughout.
    """

    def __init__(
        self,
        factor: float = Defaults.norm_factor,
        mode: str = Defaults.norm_mode,
        *,
        window: int = Defaults.norm_window,
        warmup: int = Defaults.norm_warmup,
        abs_factor: float = Defaults.norm_abs_factor,
        abs_floor: float = Defaults.norm_abs_floor,
        dp_clip: float = 0.0,
        dp_noise: float = 0.0,
    ) -> None:
        if not (math.isfinite(factor) and factor > 1):
            raise ConfigError("bad_param", f"norm bound factor must be > 1, got {factor}")
        if mode not in NORM_MODES:
            raise ConfigError("bad_param", f"norm bound mode must be one of {NORM_MODES}")
        if not 1 <= warmup <= window:
            raise ConfigError("bad_param", "norm bound needs 1 <= warmup <= window")
        if not (math.isfinite(abs_factor) and abs_factor > 0):
            raise ConfigError("bad_param", f"norm_abs_factor must be > 0, got {abs_factor}")
        if not (math.isfinite(abs_floor) and abs_floor > 0):
            raise ConfigError("bad_param", f"norm_abs_floor must be > 0, got {abs_floor}")
        self.abs_factor = float(abs_factor)
        self.abs_floor = float(abs_floor)
        self.factor = float(factor)
        self.mode = mode
        self.window = int(window)
        self.warmup = int(warmup)
        self._norms: OrderedDict[str, float] = OrderedDict()  # device -> norm, oldest first
        self._anonymous = 0
        self.dp: DpBound | None = None
        self.set_dp(dp_clip, dp_noise)

    def set_dp(self, clip: float, noise: float) -> bool:
        """The fleet's DP policy (clip 0: none), which the bound follows; whether it changed."""
        before = self.dp
        self.dp = DpBound(clip, noise) if clip > 0 else None
        return self.dp != before

    def warm(self) -> bool:
        """Whether enough devices are known for the median-based bound."""
        return len(self._norms) >= self.warmup

    def bound(self, model_norm: float | None = None, dim: int = 0) -> float | None:
        """The current bound for an update of ``dim`` coordinates: the DP policy's, else
        median-based once warm, else absolute (None without a model)."""
        if self.dp is not None:
            return self.dp.bound(dim)
        if self.warm():
            return self.factor * statistics.median(self._norms.values())
        if model_norm is None:
            return None
        return self.abs_factor * max(model_norm, self.abs_floor)

    def screen(
        self, c: Contribution, model_norm: float | None = None
    ) -> tuple[Contribution, float]:
        """The contribution to pass on (clipped if need be) and the norm to record."""
        norm = finite_norm(c)
        bound = self.bound(model_norm, sum(int(np.size(v)) for v in c.delta.values()))
        # The DP policy bounds the delta as sent, before any re-parameterization.
        measured = norm if self.dp is None or c.sent_norm is None else c.sent_norm
        if bound is None or measured <= bound:
            return c, norm
        if self.mode == "reject":
            why = self._why()
            raise UpdateRejected(
                "norm_bound",
                f"delta norm {measured:.4g} exceeds the bound {bound:.4g} ({why})",
                device=c.device or None,
                norm=measured,
                bound=bound,
            )
        scale = bound / measured
        return replace(c, delta=_scaled(c.delta, scale)), norm * scale

    def _why(self) -> str:
        if self.dp is not None:
            return self.dp.describe()
        if self.warm():
            return f"{self.factor:g} x the median norm of recent devices"
        return f"{self.abs_factor:g} x max(model norm, {self.abs_floor:g})"

    def record(self, norm: float, device: str = "") -> None:
        """Remember the norm of an update the strategy accepted (no device: a new entry).

        Under DP nothing is recorded: a noised norm is the policy's, not the device's.
        """
        if self.dp is not None:
            return
        if not device:
            self._anonymous += 1
            device = f"#{self._anonymous}"
        self._norms.pop(device, None)
        self._norms[device] = float(norm)
        if len(self._norms) > self.window:
            self._norms.popitem(last=False)

    def params(self) -> dict[str, Any]:
        return {
            "norm_factor": self.factor,
            "norm_mode": self.mode,
            "norm_window": self.window,
            "norm_warmup": self.warmup,
            "norm_abs_factor": self.abs_factor,
            "norm_abs_floor": self.abs_floor,
        }

    def state(self) -> dict[str, Any]:
        return {
            "params": {
                "factor": self.factor,
                "mode": self.mode,
                "window": self.window,
                "warmup": self.warmup,
                "abs_factor": self.abs_factor,
                "abs_floor": self.abs_floor,
                # A replay must screen as the original run did, under its policy.
                "dp_clip": 0.0 if self.dp is None else self.dp.clip,
                "dp_noise": 0.0 if self.dp is None else self.dp.noise,
            },
            "norms": [{"device": d, "norm": n} for d, n in self._norms.items()],
            "anonymous": self._anonymous,
        }

    @classmethod
    def from_state(cls, s: StateReader) -> NormBound:
        nb = cls(**s.params("params"))
        nb._norms.update(s.per_device("norms", nb.window, lambda e: e.number("norm")))
        nb._anonymous = s.integer("anonymous")
        return nb


def _scaled(delta: Mapping[str, np.ndarray], scale: float) -> Weights:
    s = np.float32(scale)
    return {k: (v * s).astype(np.float32) for k, v in delta.items()}


class Robust(Strategy):
    """Any strategy behind a screen: non-finite deltas refused, norms bounded, claims capped.

    The wrapper holds no model state of its own: weights, version, pending and flush
    are the inner strategy's, and ``name`` is the inner strategy's name, so a service or
    simulator drives it exactly as it drives the inner strategy.
    """

    state_name = "robust"

    def __init__(
        self,
        inner: Strategy,
        norm_bound: NormBound | None = None,
        claim_cap: ClaimCap | None = None,
    ) -> None:
        # No super().__init__(): the weights and version live in ``inner`` only.
        self.inner = inner
        self.norm_bound = norm_bound
        self.claim_cap = claim_cap

    @property
    def gate(self) -> ModelGate | None:  # type: ignore[override]
        return self.inner.gate

    @gate.setter
    def gate(self, gate: ModelGate | None) -> None:
        self.inner.gate = gate

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def weights(self) -> Weights:
        return self.inner.weights

    @property
    def version(self) -> int:
        return self.inner.version

    @property
    def pending(self) -> int:
        return self.inner.pending

    def staleness(self, c: Contribution) -> int:
        return self.inner.staleness(c)

    def apply(self, c: Contribution) -> bool:
        screened = c if self.claim_cap is None else self.claim_cap.screen(c)
        if self.norm_bound is None:
            finite_norm(c)
            norm = 0.0
        else:
            # The model's norm only matters for the absolute bound, before the median's.
            nb = self.norm_bound
            absolute = nb.dp is None and not nb.warm()
            model_norm = global_norm(self.inner.weights) if absolute else None
            screened, norm = self.norm_bound.screen(screened, model_norm)
        produced = self.inner.apply(screened)
        # Only reached when the inner strategy accepted it.
        if self.norm_bound is not None:
            self.norm_bound.record(norm, c.device)
        if self.claim_cap is not None:
            self.claim_cap.record(c)
        return produced

    def flush(self) -> bool:
        return self.inner.flush()

    def discard_pending(self) -> None:
        self.inner.discard_pending()

    def remap(self, fn: Callable[[Mapping[str, np.ndarray]], Weights]) -> None:
        self.inner.remap(fn)

    def set_online(self, online: int | None) -> None:
        self.inner.set_online(online)

    def set_dp(self, clip: float, noise: float) -> bool:
        return self.norm_bound is not None and self.norm_bound.set_dp(clip, noise)

    def params(self) -> dict[str, Any]:
        bound = self.norm_bound.params() if self.norm_bound else {}
        cap = self.claim_cap.params() if self.claim_cap else {}
        return {**self.inner.params(), "defence": True, **bound, **cap}

    def state(self) -> dict[str, Any]:
        bound = None if self.norm_bound is None else self.norm_bound.state()
        cap = None if self.claim_cap is None else self.claim_cap.state()
        return {
            "class": self.state_name,
            "inner": self.inner.state(),
            "norm_bound": bound,
            "claim_cap": cap,
        }

    @classmethod
    def from_state(cls, s: StateReader) -> Robust:
        bound, cap = s.maybe("norm_bound"), s.maybe("claim_cap")
        return cls(
            s.strategy("inner"),
            None if bound is None else NormBound.from_state(bound),
            None if cap is None else ClaimCap.from_state(cap),
        )
