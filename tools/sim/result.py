"""What a simulation run measured (``tools.sim.simulate``), and its JSON summary."""

from __future__ import annotations

import contextlib
import math
import statistics
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fedmq.model import accuracy, loss
from fedmq.training import Hyper
from tools.sim.tasks import Task

if TYPE_CHECKING:
    from tools.sim.simulate import SimConfig


@dataclass
class SimResult:
    config: SimConfig
    task: Task
    versions: int
    updates_applied: int
    rejected: Counter
    virtual_time_s: float
    time_to_target_s: float | None
    history: list[tuple[float, int, float]]  # (virtual time, version, metric)
    weights: dict[str, np.ndarray]
    strategy_params: dict[str, Any]
    wall_s: float
    malicious_devices: int = 0
    malicious_applied: int = 0
    malicious_rejected: Counter = field(default_factory=Counter)
    # Client-level DP, from the Intake's accountant for ``config.dp_delta``: the fleet's
    # ε and each device's (None and empty without noise).
    epsilon: float | None = None
    device_epsilons: dict[str, float] = field(default_factory=dict)
    bytes_in: int = 0  # every update payload received, as encoded

    def to_dict(self) -> dict[str, Any]:
        cfg, task = self.config, self.task
        out: dict[str, Any] = {
            "task": cfg.task,
            "strategy": cfg.strategy,
            "strategy_params": self.strategy_params,
            "devices": cfg.devices,
            "partition": cfg.partition,
            "delays": cfg.delays,
            "hyper": sim_hyper(task, cfg).to_dict(),
            "seed": cfg.seed,
            "malicious": cfg.malicious,
            "attack": cfg.attack,
            "defence": cfg.defence,
            "encoding": cfg.encoding,
            "malicious_devices": self.malicious_devices,
            "malicious_applied": self.malicious_applied,
            "malicious_rejected_by_reason": dict(sorted(self.malicious_rejected.items())),
            "versions": self.versions,
            "updates_applied": self.updates_applied,
            "updates_rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "bytes_in": self.bytes_in,
        }
        with poison_tolerant(cfg):
            test_loss = loss(task.arch, self.weights, task.test.x, task.test.y)
            if task.arch.is_classifier:
                final = accuracy(task.arch, self.weights, task.test.x, task.test.y)
                out["test_accuracy"] = round(final, 4)
                out["best_accuracy"] = round(max(m for _, _, m in self.history), 4)
                out["target"] = cfg.target
            else:
                out["w"] = rounded(self.weights["w0"][0, 0], 4)
                out["b"] = rounded(self.weights["b0"][0], 4)
                out["loss"] = rounded(test_loss, 6)
        out["test_loss"] = rounded(test_loss, 6)
        out["virtual_time_s"] = round(self.virtual_time_s, 4)
        out["time_to_target_s"] = (
            None if self.time_to_target_s is None else round(self.time_to_target_s, 4)
        )
        out["wall_s"] = round(self.wall_s, 3)
        out["dp"] = self._dp()
        return out

    def _dp(self) -> dict[str, Any] | None:
        """ε for the fleet (its worst-off device) and across devices; None without DP."""
        hyper = sim_hyper(self.task, self.config)
        if hyper.dp_clip <= 0:
            return None
        eps = sorted(self.device_epsilons.values())
        spread = {"epsilon_device_min": None, "epsilon_device_median": None}
        if eps:
            spread = {
                "epsilon_device_min": round(eps[0], 4),
                "epsilon_device_median": round(statistics.median(eps), 4),
            }
        return {
            "clip": hyper.dp_clip,
            "noise": hyper.dp_noise,
            "delta": self.config.dp_delta,
            # None with noise 0: no guarantee at all (ε is infinite)
            "epsilon_fleet": None if self.epsilon is None else round(self.epsilon, 4),
            "epsilon_device_max": round(eps[-1], 4) if eps else None,
            **spread,
            "devices_spending": len(eps),
        }


def rounded(value: Any, digits: int) -> float | None:
    """A JSON-safe number: a poisoned model's NaN or infinite loss becomes None."""
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


@contextlib.contextmanager
def poison_tolerant(cfg: SimConfig) -> Iterator[None]:
    """Under attack, overflow and NaN in the model are the measurement, not a bug."""
    if cfg.malicious > 0:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            yield
    else:
        yield


def sim_hyper(task: Task, cfg: SimConfig) -> Hyper:
    return Hyper(**(task.hyper.__dict__ | cfg.hyper))
