"""Splitting one data set across simulated devices: IID, Dirichlet label skew, shards.

Every scheme returns one sorted int64 index array per device; the arrays are
disjoint, together cover every sample, and none is empty. All randomness comes from
the ``rng`` passed in, so the same seed gives the same split.

- ``iid``: a random permutation cut into near-equal parts.
- ``dirichlet:ALPHA`` (Hsu et al. 2019): for each class, device shares drawn from
  Dirichlet(ALPHA, ..., ALPHA); small ALPHA gives each device few classes, large ALPHA
  approaches IID. A device left empty takes one random sample from the currently
  largest device (repeated until none is empty), so the split always succeeds when
  there are at least as many samples as devices.
- ``shards:K`` (McMahan et al. 2017): samples sorted by label (random order within a
  class), cut into ``devices * K`` contiguous shards, K random shards per device.
"""

from __future__ import annotations

import math

import numpy as np

from fedmq.errors import ConfigError
from fedmq.spec import parse_spec

_USAGE = (
    "use iid, dirichlet:ALPHA (ALPHA > 0, e.g. dirichlet:0.5) or shards:K (K >= 1, e.g. shards:2)"
)


def parse_partition(spec: str) -> tuple[str, float | int | None]:
    """``"iid"`` → ``("iid", None)``, ``"dirichlet:0.5"`` → ``("dirichlet", 0.5)``,
    ``"shards:2"`` → ``("shards", 2)``; ConfigError("bad_partition") otherwise."""
    name, args, _ = parse_spec(spec) or ("", (), "")
    if name == "iid" and not args:
        return "iid", None
    if name == "dirichlet" and len(args) == 1 and args[0] > 0:
        return "dirichlet", args[0]
    if name == "shards" and len(args) == 1 and args[0] >= 1 and args[0].is_integer():
        return "shards", int(args[0])
    raise ConfigError("bad_partition", f"bad partition {spec!r}: {_USAGE}")


def iid(n: int, n_devices: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation of ``range(n)`` cut into ``n_devices`` near-equal parts."""
    _check_counts(n, n_devices)
    order = rng.permutation(n)
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, n_devices)]


def dirichlet(
    labels: np.ndarray, n_devices: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per-class Dirichlet(``alpha``) shares across devices; no device left empty."""
    labels = _class_labels(labels, "dirichlet")
    _check_counts(len(labels), n_devices)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ConfigError("bad_partition", f"dirichlet alpha must be > 0, got {alpha!r}")
    owned: list[list[np.ndarray]] = [[] for _ in range(n_devices)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        p = rng.dirichlet(np.full(n_devices, alpha))
        if not (np.isfinite(p).all() and p.sum() > 0):  # tiny alpha can underflow
            p = np.zeros(n_devices)
            p[rng.integers(n_devices)] = 1.0
        cuts = np.floor(np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
        for dev, part in enumerate(np.split(idx, np.clip(cuts, 0, len(idx)))):
            owned[dev].append(part)
    parts = [np.concatenate(p).astype(np.int64) for p in owned]
    # No empty device: move one random sample from the largest device, which has at
    # least two samples whenever some device has none (n >= n_devices).
    for dev in range(n_devices):
        if len(parts[dev]) == 0:
            donor = int(np.argmax([len(p) for p in parts]))
            take = int(rng.integers(len(parts[donor])))
            parts[dev] = parts[donor][take : take + 1]
            parts[donor] = np.delete(parts[donor], take)
    return [np.sort(p) for p in parts]


def shards(
    labels: np.ndarray, n_devices: int, k: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Sort by label, cut into ``n_devices * k`` shards, deal ``k`` shards to each device."""
    labels = _class_labels(labels, "shards")
    _check_counts(len(labels), n_devices)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ConfigError("bad_partition", f"shards K must be an integer >= 1, got {k!r}")
    n_shards = n_devices * int(k)
    if n_shards > len(labels):
        raise ConfigError(
            "bad_partition",
            f"shards:{k} with {n_devices} devices needs at least {n_shards} samples, "
            f"there are {len(labels)}",
        )
    shuffled = rng.permutation(len(labels))
    order = shuffled[np.argsort(labels[shuffled], kind="stable")]  # random within a class
    pieces = np.array_split(order, n_shards)
    deal = rng.permutation(n_shards).reshape(n_devices, int(k))
    return [np.sort(np.concatenate([pieces[s] for s in row])).astype(np.int64) for row in deal]


def partition(
    spec: str, labels: np.ndarray, n_devices: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Split the samples behind ``labels`` across ``n_devices`` by the scheme ``spec``."""
    name, param = parse_partition(spec)
    labels = np.asarray(labels)
    if name == "iid":
        return iid(len(labels), n_devices, rng)
    if name == "dirichlet":
        return dirichlet(labels, n_devices, float(param), rng)  # type: ignore[arg-type]
    return shards(labels, n_devices, int(param), rng)  # type: ignore[arg-type]


def _check_counts(n: int, n_devices: int) -> None:
    if isinstance(n_devices, bool) or not isinstance(n_devices, int | np.integer):
        raise ConfigError(
            "bad_partition", f"the number of devices must be an int, got {n_devices!r}"
        )
    if n_devices < 1:
        raise ConfigError("bad_partition", f"need at least one device, got {n_devices}")
    if n_devices > n:
        raise ConfigError(
            "too_many_devices",
            f"cannot split {n} samples across {n_devices} devices: every device needs "
            "at least one sample",
        )


def _class_labels(labels: np.ndarray, scheme: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ConfigError(
            "bad_partition",
            f"{scheme} splits by class label, so it needs integer class labels "
            f"(got {labels.dtype} of shape {labels.shape}); a regression task can only "
            "be split iid",
        )
    return labels
