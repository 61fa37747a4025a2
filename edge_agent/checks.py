"""What an agent accepts from the network, as pure functions the agent and tests share.

Everything a device receives is checked here before it acts on it. A refusal is a
FedmqError whose ``reason`` goes into the device's retained status (state ``error``);
the agent keeps its last good model and waits for the next one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedmq.errors import FedmqError, WireError
from fedmq.training import Hyper, TrainStats
from fedmq.wire import MAX_STATUS_MESSAGE, DeviceLedger, GlobalModel

Stamp = tuple[int, int, float]


def stamp(model: GlobalModel) -> Stamp:
    """Order of the models of one run: by rollbacks, version, then publish time.

    An announced rollback (``rollbacks`` + 1) comes after every version before it. An
    aggregator that restarts republishes its current version with a new
    ``created_at``; an update sent while it was away may be lost, so that republish is
    also a prompt to train again rather than wait for a version that may never come.
    """
    return (model.rollbacks, model.version, model.created_at)


def follows(held: GlobalModel | None, offered: GlobalModel) -> bool:
    """The version-acceptance rule: does ``offered`` replace the model the agent holds?

    A model of another run always does: the aggregator's run is the one to follow. In
    the same run, only a later stamp does, so a lower version is ignored unless the
    aggregator announced a rollback (docs/wire.md 3.2).
    """
    return held is None or offered.run != held.run or stamp(offered) > stamp(held)


# A DP policy outside these is a mistake or an attack, not a privacy choice: z above
# 100 drowns any signal, a clip norm above 1e4 bounds nothing a model this size sends.
MAX_DP_NOISE = 100.0
MAX_DP_CLIP = 1e4


def rng_for(seed: int | None, device: str) -> np.random.Generator:
    """The device's RNG (training order and DP noise); a ``seed`` is mixed with the device
    id so two devices given the same seed still draw independent noise."""
    if seed is None:
        return np.random.default_rng()  # OS entropy: DP noise nobody can predict
    return np.random.default_rng([seed, *device.encode()])


@dataclass(frozen=True)
class Limits:
    """What a received ``hyper`` may ask of this device (the agent's max_* settings;
    ``max_train_seconds`` is enforced while training)."""

    max_epochs: int
    max_batch: int


def check_dp_policy(hyper: Hyper) -> None:
    """Refuse a DP policy (clip C, noise multiplier z) outside sane limits (``dp_policy``)."""
    if hyper.dp_noise > MAX_DP_NOISE or (hyper.dp_noise > 0 and hyper.dp_clip > MAX_DP_CLIP):
        raise FedmqError(
            "dp_policy",
            f"DP policy clip={hyper.dp_clip:g} noise={hyper.dp_noise:g} is outside the sane limits"
            f" (noise <= {MAX_DP_NOISE:g}, clip <= {MAX_DP_CLIP:g} with noise)",
        )


def check_hyper(hyper: Hyper, limits: Limits) -> None:
    """Refuse a ``hyper`` beyond this device's limits (reason ``hyper_limit``)."""
    check_dp_policy(hyper)
    for name, asked, allowed in (
        ("epochs", hyper.epochs, limits.max_epochs),
        ("batch", hyper.batch, limits.max_batch),
    ):
        if asked > allowed:
            raise FedmqError(
                "hyper_limit",
                f"hyper asks for {name}={asked}; this device allows at most max_{name}={allowed}",
            )


def read_model(payload: bytes, n_inputs: int | None, limits: Limits) -> GlobalModel:
    """Decode a global model and check it against this device's limits and, unless
    ``n_inputs`` is None (the agent checks its data itself), its feature count."""
    try:
        model = GlobalModel.decode(payload)
    except WireError as exc:
        raise FedmqError(exc.reason, f"undecodable global model: {exc.message}") from exc
    if n_inputs is not None and model.arch.n_inputs != n_inputs:
        raise FedmqError(
            "bad_shape",
            f"model v{model.version} expects {model.arch.n_inputs} features, "
            f"the data has {n_inputs}",
        )
    check_hyper(model.hyper, limits)
    return model


def check_result(delta: Mapping[str, np.ndarray], stats: TrainStats) -> None:
    """Refuse a training result that is not finite (reason ``train_non_finite``).

    Finite but huge weights (values near 1e30) decode fine and then overflow in
    training; such a delta must become an error status, never an update.
    """
    bad = [name for name, arr in delta.items() if not np.isfinite(arr).all()]
    if bad or not math.isfinite(stats.loss):
        what = f"delta {', '.join(bad)}" if bad else f"loss {stats.loss}"
        raise FedmqError("train_non_finite", f"training produced a non-finite {what}")


def read_ledger(payload: bytes, device: str) -> DeviceLedger:
    """Decode the aggregator's retained ledger of this device."""
    ledger = DeviceLedger.decode(payload)
    if ledger.device != device:
        raise WireError("identity_mismatch", f"ledger of {ledger.device!r}, not of {device!r}")
    return ledger


def one_line(text: str, limit: int = MAX_STATUS_MESSAGE) -> str:
    """``text`` as one line of at most ``limit`` characters, for a status message."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
