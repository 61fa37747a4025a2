"""The :class:`Dataset` and its invariants, and the checks the file readers share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedmq.errors import ConfigError, DataError
from fedmq.model import MAX_WIDTH

if TYPE_CHECKING:
    from fedmq.schema import Schema

TASK_NAMES = {
    "classification": "classification",
    "classify": "classification",
    "regression": "regression",
    "regress": "regression",
}
MAX_CLASS = MAX_WIDTH - 1  # an MLP has at most MAX_WIDTH outputs


def canonical_task(task: str) -> str:
    """``"classification"`` or ``"regression"``; ConfigError for anything else."""
    try:
        return TASK_NAMES[task]
    except (KeyError, TypeError):
        raise ConfigError(
            "bad_task",
            f"task must be one of {sorted(TASK_NAMES)}, got {task!r}",
        ) from None


@dataclass(frozen=True, eq=False)
class Dataset:
    """Features ``x`` (float32, ``(n, features)``) and labels or targets ``y``.

    Integer ``y`` is taken as class labels (int64, ``(n,)``; a ``(n, 1)`` column is
    flattened); float ``y`` as regression targets (float32, ``(n, outputs)``; a 1-D
    vector becomes one column). At least one row and one feature; all values finite.
    """

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        x = _features(np.asarray(self.x))
        y = _labels(np.asarray(self.y))
        if len(y) != len(x):
            raise DataError("bad_shape", f"x has {len(x)} rows but y has {len(y)}")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.x.shape[1])

    @property
    def task(self) -> str:
        """``"classification"`` (integer labels) or ``"regression"`` (float targets)."""
        return "classification" if self.y.dtype == np.int64 else "regression"

    def __repr__(self) -> str:
        return f"Dataset({len(self)} rows, {self.n_features} features, {self.task})"


def _features(x: np.ndarray) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise DataError("bad_shape", f"features must be numbers, got dtype {x.dtype}")
    if x.ndim != 2:
        raise DataError("bad_shape", f"features must be 2-D (n, features), got {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError("bad_shape", f"need at least one row and one feature, got {x.shape}")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow → inf, reported below
        x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        row, col = np.argwhere(~np.isfinite(x))[0]
        raise DataError(
            "not_finite",
            f"feature x[{row}, {col}] is {x[row, col]} (all values must be finite)",
        )
    return x


def _labels(y: np.ndarray) -> np.ndarray:
    if y.dtype.kind in "iu":
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise DataError("bad_shape", f"class labels must be 1-D (n,), got {y.shape}")
        if len(y) and (y.min() < 0 or y.max() > MAX_CLASS):
            bad = int(np.argmax((y < 0) | (y > MAX_CLASS)))
            raise DataError(
                "bad_label", f"label y[{bad}] = {y[bad]} is not a class index in 0..{MAX_CLASS}"
            )
        return np.ascontiguousarray(y, dtype=np.int64)
    if y.dtype.kind != "f":
        raise DataError(
            "bad_shape",
            f"y must be integer class labels or float targets, got dtype {y.dtype}",
        )
    if y.ndim == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2 or y.shape[1] == 0:
        raise DataError(
            "bad_shape", f"regression targets must be (n,) or (n, outputs), got {y.shape}"
        )
    y = to_f32(y)
    if not np.isfinite(y).all():
        row = int(np.argwhere(~np.isfinite(y))[0][0])
        raise DataError(
            "not_finite",
            f"target y[{row}] is {y[row].tolist()} (all values must be finite and fit in float32)",
        )
    return np.ascontiguousarray(y)


def targets(values: np.ndarray, task: str, where: Callable[[int], str]) -> np.ndarray:
    """Labels (int64) or targets (float32) from parsed float64 values; ``where(i)``
    names the place of value ``i`` in error messages."""
    if task == "classification":
        ok = (values >= 0) & (values <= MAX_CLASS) & (values == np.floor(values))
        if not ok.all():
            i = int(np.argmin(ok))
            v = values[i]
            shown = int(v) if float(v).is_integer() else v
            raise DataError(
                "bad_label",
                f"{where(i)}: label {shown} is not a class index (an integer in 0..{MAX_CLASS}); "
                "for real-valued targets use task=regression",
            )
        return values.astype(np.int64)
    fits = finite_f32(
        values, lambda i: f"{where(i[0])}: target {values[i]} does not fit in float32"
    )
    return fits.reshape(-1, 1)


def finite_f32(values: np.ndarray, where: Callable[[tuple[int, ...]], str]) -> np.ndarray:
    """``values`` as float32; DataError("not_finite", ``where(index)``) at the first one that
    is not finite there (NaN, inf, or beyond float32's range)."""
    result = to_f32(values)
    bad = ~np.isfinite(result)
    if bad.any():
        raise DataError("not_finite", where(tuple(int(i) for i in np.argwhere(bad)[0])))
    return result


def to_f32(values: np.ndarray) -> np.ndarray:
    """Cast to float32; values beyond its range become inf (callers check)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return values.astype(np.float32)


def check_schema(ds: Dataset, schema: Schema, where: str) -> Dataset:
    """``ds`` if it fits ``schema`` (see :func:`check_fits`). For data read by position
    (NPZ), which has no column names to check."""
    names = f" ({list(schema.features)})"
    classes = f": {list(schema.classes)}" if schema.classes is not None else ""
    return check_fits(
        ds,
        features=schema.n_features,
        task=schema.task,
        outputs=schema.n_outputs,
        where=where,
        against=f"the schema{names}",
        classes=classes,
    )


def check_fits(
    ds: Dataset,
    *,
    features: int,
    task: str,
    outputs: int,
    where: str,
    against: str = "the model",
    classes: str = "",
) -> Dataset:
    """``ds`` if a model of ``features`` inputs and ``outputs`` outputs (classes, or
    regression targets) for ``task`` can learn from it; else DataError ``missing_feature``
    / ``extra_feature`` (feature count), ``wrong_task``, ``unknown_class`` (a class index
    >= ``outputs``) or ``wrong_outputs`` (regression target count), the message starting
    with ``where`` and naming ``against``."""
    n = ds.n_features
    if n != features:
        raise DataError(
            "missing_feature" if n < features else "extra_feature",
            f"{where}: {n} feature columns, {against} has {features}",
        )
    if ds.task != canonical_task(task):
        raise DataError("wrong_task", f"{where}: the data is for {ds.task}, {against} for {task}")
    if ds.task == "classification" and int(ds.y.max()) >= outputs:
        row = int(np.argmax(ds.y >= outputs))
        raise DataError(
            "unknown_class",
            f"{where}: y[{row}] = {int(ds.y[row])} is not a class index of {against} "
            f"(0..{outputs - 1}{classes})",
        )
    if ds.task == "regression" and ds.y.shape[1] != outputs:
        raise DataError(
            "wrong_outputs", f"{where}: {ds.y.shape[1]} targets, {against} has {outputs} outputs"
        )
    return ds


def standardize(
    train_x: np.ndarray, *others: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Scale features to zero mean and unit variance using ``train_x``'s statistics.

    Returns ``(mean, std, [train_x', *others'])`` (float32). A constant column (std zero,
    or within rounding of zero) gets std 1, so it maps to zeros instead of NaN.
    """
    train = np.asarray(train_x, dtype=np.float64)
    if train.ndim != 2 or len(train) == 0:
        raise DataError("bad_shape", f"standardize needs a non-empty 2-D array, got {train.shape}")
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std <= 1e-12 * np.maximum(1.0, np.abs(mean)), 1.0, std)
    out = []
    for a in (train_x, *others):
        a = np.asarray(a, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != train.shape[1]:
            raise DataError(
                "bad_shape", f"standardize: array of shape {a.shape} does not match {train.shape}"
            )
        out.append(((a - mean) / std).astype(np.float32))
    return mean.astype(np.float32), std.astype(np.float32), out
