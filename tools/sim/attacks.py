"""What a malicious device sends, shared by the simulator, the demo and the benchmarks.

``ATTACKS`` names each attack; ``attack_update`` computes the delta an attacker sends
instead of its honest one, and ``poison_nan`` writes the NaN bytes the codec refuses
to encode (an attacker is not bound by fedmq's encoder).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fedmq.model import Arch, Weights
from fedmq.training import Hyper, train_local
from fedmq.wire import Update

ATTACKS = {
    "signflip": "the honest delta negated and scaled x10",
    "noise": "Gaussian noise with 10x the RMS of the honest delta (norm ~10x honest)",
    "nan": "a delta full of NaN",
    "labelflip": "an honest run on flipped labels y -> C-1-y",
    "ridebound": "the honest delta negated, scaled to sit just under the norm bound: x0.7 "
    "after each of its updates the bound refused, x1.05 after each it did not (what its "
    "device_ledger tells a device); simulate only",
}
# The attacks a real agent over MQTT can mount in `fedmq demo`: ridebound learns from
# each update's outcome, which the simulator knows at once.
WIRE_ATTACKS = tuple(a for a in ATTACKS if a != "ridebound")
SIGNFLIP_SCALE = 10.0
NOISE_SCALE = 10.0
RIDE_DOWN, RIDE_UP = 0.7, 1.05


def ride(scale: float, refused_by_bound: bool) -> float:
    """A bound-riding attacker's next scale, after the outcome of its last update."""
    return scale * (RIDE_DOWN if refused_by_bound else RIDE_UP)


def pick_malicious(devices: int, fraction: float, seed: int) -> list[int]:
    """Which devices attack: ``round(fraction * devices)`` of them, chosen by seed.

    A generator of its own, so the split, delays and training draws are the clean run's.
    """
    count = round(fraction * devices)
    rng = np.random.default_rng([seed, 0xBAD])
    return sorted(int(i) for i in rng.choice(devices, size=count, replace=False))


def signflip(honest: Weights, scale: float = SIGNFLIP_SCALE) -> Weights:
    return {k: (-scale * v).astype(np.float32) for k, v in honest.items()}


def attack_update(
    attack: str,
    arch: Arch,
    base: Weights,
    x: np.ndarray,
    y: np.ndarray,
    hyper: Hyper,
    rng: np.random.Generator,
    scale: float = SIGNFLIP_SCALE,
) -> Weights:
    """The delta a malicious device sends (see ``ATTACKS``); ``nan`` is all NaN.

    ``scale``: ridebound's current multiple of its honest delta (see ``ride``)."""
    if attack == "nan":
        return {k: np.full_like(v, np.nan) for k, v in base.items()}
    if attack == "labelflip":
        flipped = arch.n_outputs - 1 - np.asarray(y)
        return train_local(arch, base, x, flipped, hyper, rng)[0]
    honest, _ = train_local(arch, base, x, y, hyper, rng)
    if attack in ("signflip", "ridebound"):
        return signflip(honest, scale if attack == "ridebound" else SIGNFLIP_SCALE)
    size = sum(v.size for v in honest.values())
    rms = float(np.sqrt(sum(float(np.sum(np.square(v))) for v in honest.values()) / size))
    return {
        k: rng.normal(0.0, NOISE_SCALE * rms, v.shape).astype(np.float32) for k, v in honest.items()
    }


def poison_nan(update: Update) -> Update:
    """``update`` with a float32 delta full of NaN, as an attacker puts it on the wire."""
    nan = {k: np.full(v.shape, np.nan, np.float32) for k, v in update.delta.items()}
    return dataclasses.replace(update, encoding="f32", delta=nan, scales={}, indices={})
