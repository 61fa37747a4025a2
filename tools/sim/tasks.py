"""The bundled learning tasks the simulator and the demo run: ``digits`` and ``linreg``.

- ``digits``: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), an MLP
  64-32-10. The 80/20 train/test split is stratified and always uses split seed 0,
  whatever the run's seed, so every run is scored on the same 360 test images.
- ``linreg``: the worked example ``y = 3x + 2 + N(0, 0.1^2)``, ``x ~ U[0, 1)``; 1000
  train and 200 test points drawn from the run's seed; a linear model 1-1 (MSE).

scikit-learn is imported only when the digits task is loaded (``fedmq[sim]``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fedmq.data import Dataset, standardize
from fedmq.errors import ConfigError
from fedmq.model import Arch, accuracy, add, init_weights, loss
from fedmq.training import Hyper, train_local

TASKS = ("digits", "linreg")
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2
LINREG_TRAIN, LINREG_TEST = 1000, 200
LINREG_W, LINREG_B, LINREG_NOISE = 3.0, 2.0, 0.1


@dataclass(frozen=True)
class Task:
    name: str
    arch: Arch
    train: Dataset
    test: Dataset
    hyper: Hyper
    split_seed: int
    description: str


def load_task(name: str, *, seed: int = 0) -> Task:
    """The bundled task ``name`` (one of :data:`TASKS`); ``seed`` drives linreg's data."""
    if name == "digits":
        return _digits()
    if name == "linreg":
        return _linreg(seed)
    raise ConfigError("unknown_task", f"unknown task {name!r}; the bundled tasks are {TASKS}")


def stratified_split(
    labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, test_idx)``: ``ceil(n * test_fraction)`` test samples, each class
    represented in proportion (largest-remainder rounding); both in random order."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    n_test = int(np.ceil(len(labels) * test_fraction))
    ideal = counts * n_test / len(labels)
    quota = np.floor(ideal).astype(np.int64)
    short = n_test - int(quota.sum())
    # Hand the remaining test slots to the classes with the largest remainders
    # (ties to the smaller class label, for determinism).
    quota[np.argsort(-(ideal - quota), kind="stable")[:short]] += 1
    train, test = [], []
    for cls, q in zip(classes, quota, strict=True):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        test.append(idx[:q])
        train.append(idx[q:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _digits() -> Task:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ConfigError(
            "missing_dependency",
            "the digits task needs scikit-learn: pip install 'fedmq[sim]'",
        ) from exc
    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    train_idx, test_idx = stratified_split(y, DIGITS_TEST_FRACTION, rng)
    _, _, (x_train, x_test) = standardize(x[train_idx], x[test_idx])
    return Task(
        name="digits",
        arch=Arch("mlp", (64, 32, 10), "relu"),
        train=Dataset(x_train, y[train_idx]),
        test=Dataset(x_test, y[test_idx]),
        hyper=Hyper(lr=0.05, epochs=1, batch=16),
        split_seed=DIGITS_SPLIT_SEED,
        description=(
            f"scikit-learn digits (8x8 images, 10 classes): {len(train_idx)} train / "
            f"{len(test_idx)} test, stratified split with fixed split seed "
            f"{DIGITS_SPLIT_SEED} (the same test set for every run, whatever --seed); "
            "features standardized with the train mean/std; MLP 64-32-10 relu"
        ),
    )


def _linreg(seed: int) -> Task:
    rng = np.random.default_rng(seed)

    def draw(n: int) -> Dataset:
        x = rng.random((n, 1))
        y = LINREG_W * x + LINREG_B + rng.normal(0.0, LINREG_NOISE, (n, 1))
        return Dataset(x.astype(np.float32), y.astype(np.float32))

    train = draw(LINREG_TRAIN)
    test = draw(LINREG_TEST)
    return Task(
        name="linreg",
        arch=Arch("linear", (1, 1)),
        train=train,
        test=test,
        hyper=Hyper(lr=0.1, epochs=5, batch=16),
        split_seed=seed,
        description=(
            f"linear regression y = {LINREG_W:g}x + {LINREG_B:g} + N(0, {LINREG_NOISE:g}^2), "
            f"x ~ U[0, 1): {LINREG_TRAIN} train / {LINREG_TEST} test points generated "
            f"from seed {seed}; linear model 1-1, MSE"
        ),
    )


def centralized_baseline(
    task: Task,
    *,
    epochs: int = 40,
    seed: int = 0,
    lr: float | None = None,
    batch: int | None = None,
) -> float:
    """Train the task's model on the whole train set in one place and score it.

    ``epochs`` of mini-batch SGD (``fedmq.training.train_local``) from
    ``init_weights(arch, seed)``, with the task's lr and batch unless given. Returns the
    test accuracy for a classifier, the test MSE for regression: the figure a
    federation is compared against.
    """
    hyper = replace(
        task.hyper,
        epochs=epochs,
        lr=task.hyper.lr if lr is None else lr,
        batch=task.hyper.batch if batch is None else batch,
        mu=0.0,
        dp_clip=0.0,
        dp_noise=0.0,
    )
    base = init_weights(task.arch, seed)
    delta, _ = train_local(
        task.arch, base, task.train.x, task.train.y, hyper, np.random.default_rng(seed)
    )
    weights = add(base, delta)
    if task.arch.is_classifier:
        return accuracy(task.arch, weights, task.test.x, task.test.y)
    return loss(task.arch, weights, task.test.x, task.test.y)
