"""Local training on a device, as a pure function: weights and data in, delta out."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedmq.errors import ModelError
from fedmq.model import (
    Arch,
    Weights,
    check_weights,
    copy_weights,
    global_norm,
    loss_and_grads,
    subtract,
)
from fedmq.preprocess import Standardizer
from fedmq.settings import setting


@dataclass(frozen=True)
class Hyper:
    """Devices' hyper-parameters (the aggregator ships them in ``GlobalModel.hyper``).

    ``mu`` is the FedProx proximal weight (0 = plain FedAvg local SGD); ``dp_clip`` (C)
    bounds the L2 norm of the delta (0 = no clipping); ``dp_noise`` (z) is the standard
    deviation of Gaussian noise added to the clipped delta, as a multiple of C: the
    fleet's client-level DP policy. On the wire they are ``clip`` and ``noise``.
    """

    lr: float = setting(0.05, help="Devices' local learning rate.")
    epochs: int = setting(1, help="Devices' local epochs per run (1 to 1000).")
    batch: int = setting(16, help="Devices' local batch size.")
    mu: float = setting(0.0, help="FedProx proximal weight μ (0: plain local SGD).")
    dp_clip: float = setting(
        0.0, help="DP: devices clip their delta to this L2 norm C (0: no clipping)."
    )
    dp_noise: float = setting(
        0.0, help="DP: noise multiplier z; devices add Gaussian noise of std z·C (needs dp_clip)."
    )

    def __post_init__(self) -> None:
        checks = {
            "lr": self.lr > 0 and np.isfinite(self.lr),
            "epochs": isinstance(self.epochs, int) and 1 <= self.epochs <= 1000,
            "batch": isinstance(self.batch, int) and 1 <= self.batch <= 1_000_000,
            "mu": self.mu >= 0 and np.isfinite(self.mu),
            "dp_clip": self.dp_clip >= 0 and np.isfinite(self.dp_clip),
            "dp_noise": self.dp_noise >= 0 and np.isfinite(self.dp_noise),
        }
        for name, ok in checks.items():
            if not ok:
                raise ModelError(
                    "bad_hyper", f"hyper-parameter {name}={getattr(self, name)!r} is out of range"
                )
        if self.dp_noise > 0 and self.dp_clip <= 0:
            raise ModelError("bad_hyper", "noise needs clip > 0: the noise scale is noise * clip")

    def to_dict(self) -> dict:
        """The wire's ``hyper`` map; ``noise`` only when set (an optional key of v1)."""
        out = {"lr": self.lr, "epochs": self.epochs, "batch": self.batch, "mu": self.mu}
        out["clip"] = self.dp_clip
        if self.dp_noise:
            out["noise"] = self.dp_noise
        return out

    @classmethod
    def from_wire(cls, values: Mapping[str, float | int]) -> Hyper:
        """The inverse of ``to_dict``: wire keys ``clip`` and ``noise`` are the DP policy."""
        args = dict(values)
        for wire, name in (("clip", "dp_clip"), ("noise", "dp_noise")):
            if wire in args:
                args[name] = args.pop(wire)
        return cls(**args)


@dataclass(frozen=True)
class TrainStats:
    loss: float  # mean training loss over the last epoch
    samples: int
    steps: int
    seconds: float
    clipped: bool


def clip_delta(delta: Mapping[str, np.ndarray], max_norm: float) -> tuple[Weights, bool]:
    """Scale ``delta`` down to L2 norm ``max_norm`` if it is longer; report whether it was."""
    norm = global_norm(delta)
    if max_norm <= 0 or norm <= max_norm:
        return dict(delta), False
    factor = np.float32(max_norm / norm)
    return {k: (v * factor).astype(np.float32) for k, v in delta.items()}, True


def _clip_and_noise(delta: Weights, hyper: Hyper, rng: np.random.Generator) -> tuple[Weights, bool]:
    delta, clipped = clip_delta(delta, hyper.dp_clip)
    if hyper.dp_noise > 0:
        sigma = hyper.dp_noise * hyper.dp_clip
        delta = {
            k: (v + rng.normal(0.0, sigma, v.shape)).astype(np.float32) for k, v in delta.items()
        }
    return delta, clipped


class TrainingStopped(ModelError):
    """Raised by ``train_local`` when its ``stop`` flag is set (reason ``stopped``) or
    its time budget is spent (reason ``train_timeout``); the partial run is discarded."""


def _check_inputs(arch: Arch, base: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> None:
    check_weights(arch, base)
    n = len(x)
    if n == 0:
        raise ModelError("no_data", "cannot train on an empty data set")
    if x.ndim != 2 or x.shape[1] != arch.n_inputs:
        raise ModelError(
            "bad_data", f"features have shape {x.shape}, model expects (n, {arch.n_inputs})"
        )
    # Unchecked, extra labels are ignored and a negative class silently indexes from the end.
    labels = np.asarray(y)
    if len(labels) != n:
        raise ModelError("bad_data", f"{len(labels)} labels for {n} rows of features")
    if arch.is_classifier and (
        labels.ndim != 1 or labels.min() < 0 or labels.max() >= arch.n_outputs
    ):
        raise ModelError("bad_data", f"class labels must be a vector in 0..{arch.n_outputs - 1}")


def train_local(
    arch: Arch,
    base: Mapping[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    hyper: Hyper,
    rng: np.random.Generator,
    *,
    stop: threading.Event | None = None,
    max_seconds: float | None = None,
    prep: Standardizer | None = None,
) -> tuple[Weights, TrainStats]:
    """E epochs of mini-batch SGD from ``base``; returns ``local - base`` and stats.

    FedProx (Li et al. 2020) adds ``mu/2 * ||w - base||^2`` to the loss, i.e.
    ``mu * (w - base)`` to each gradient. ``stop`` and ``max_seconds`` are checked
    between mini-batches (raising TrainingStopped), so a caller in another thread can
    end a long run within one mini-batch. ``prep``: the model sees ``prep.apply(x)``.
    """
    _check_inputs(arch, base, x, y)
    if prep is not None:
        x = prep.apply(x)
    n = len(x)
    started = time.perf_counter()
    deadline = None if max_seconds is None else started + max_seconds
    w = copy_weights(base)
    steps = 0
    epoch_loss = 0.0
    lr = np.float32(hyper.lr)
    for epoch in range(hyper.epochs):
        order = rng.permutation(n)
        total, seen = 0.0, 0
        for start in range(0, n, hyper.batch):
            if stop is not None and stop.is_set():
                raise TrainingStopped("stopped", f"stopped after {steps} steps")
            if deadline is not None and time.perf_counter() > deadline:
                raise TrainingStopped(
                    "train_timeout",
                    f"training took longer than {max_seconds:g} s "
                    f"(epoch {epoch + 1} of {hyper.epochs}, {steps} steps)",
                )
            idx = order[start : start + hyper.batch]
            batch_loss, grads = loss_and_grads(arch, w, x[idx], y[idx])
            for name, g in grads.items():
                if hyper.mu:
                    g = g + np.float32(hyper.mu) * (w[name] - base[name])
                w[name] -= lr * g
            total += batch_loss * len(idx)
            seen += len(idx)
            steps += 1
        epoch_loss = total / seen
    delta, clipped = _clip_and_noise(subtract(w, base), hyper, rng)
    stats = TrainStats(
        loss=float(epoch_loss),
        samples=n,
        steps=steps,
        seconds=time.perf_counter() - started,
        clipped=clipped,
    )
    return delta, stats
