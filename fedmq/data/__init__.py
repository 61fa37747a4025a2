"""Data sets on disk: CSV and NPZ files of features and labels, read defensively.

The edge agent imports this module on a Raspberry Pi, so it needs NumPy and the
standard library only. Every way a file can be unusable (missing, empty, ragged rows,
text where a number belongs, NaN/inf, no label column, a label that is not a class)
raises :class:`~fedmq.errors.DataError` with the file and, for CSV, the line.

A data set is either for classification (``y``: int64 class indices, shape ``(n,)``)
or for regression (``y``: float32 targets, shape ``(n, outputs)``). ``task=`` takes the
names the configs use, ``"classification"`` and ``"regression"``, and the short forms
``"classify"`` and ``"regress"``.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from fedmq.errors import ConfigError, DataError
from fedmq.model import MAX_WIDTH

TASK_NAMES = {
    "classification": "classification",
    "classify": "classification",
    "regression": "regression",
    "regress": "regression",
}
SUFFIXES = (".csv", ".npz")
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
        x = np.asarray(self.x)
        y = np.asarray(self.y)
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
            y = np.ascontiguousarray(y, dtype=np.int64)
        elif y.dtype.kind == "f":
            if y.ndim == 1:
                y = y.reshape(-1, 1)
            if y.ndim != 2 or y.shape[1] == 0:
                raise DataError(
                    "bad_shape", f"regression targets must be (n,) or (n, outputs), got {y.shape}"
                )
            with np.errstate(over="ignore", invalid="ignore"):
                y = np.ascontiguousarray(y, dtype=np.float32)
            if not np.isfinite(y).all():
                row = int(np.argwhere(~np.isfinite(y))[0][0])
                raise DataError(
                    "not_finite",
                    f"target y[{row}] is {y[row].tolist()} (all values must be finite "
                    "and fit in float32)",
                )
        else:
            raise DataError(
                "bad_shape",
                f"y must be integer class labels or float targets, got dtype {y.dtype}",
            )
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


# ----------------------------------------------------------------------------- files


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError("no_file", f"{path}: no such file", path=str(path))
    if not path.is_file():
        raise DataError("no_file", f"{path}: not a regular file", path=str(path))


def _targets(values: np.ndarray, task: str, where: Callable[[int], str]) -> np.ndarray:
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
    targets = _to_f32(values)
    too_big = ~np.isfinite(targets)
    if too_big.any():
        i = int(np.argmax(too_big))
        raise DataError("not_finite", f"{where(i)}: target {values[i]} does not fit in float32")
    return targets.reshape(-1, 1)


def _to_f32(values: np.ndarray) -> np.ndarray:
    """Cast to float32; values beyond its range become inf (callers check)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return values.astype(np.float32)


def _parse_cell(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _label_index(label: str | int, header: list[str] | None, ncols: int, path: Path) -> int:
    """Resolve ``label`` (a column name, an index, or an index written as text)."""
    if isinstance(label, bool):
        raise DataError("no_label", f"{path}: label must be a column name or index, got {label!r}")
    if isinstance(label, str):
        if header is not None and label in header:
            if header.count(label) > 1:
                raise DataError(
                    "no_label", f"{path}: the header names column {label!r} more than once"
                )
            return header.index(label)
        try:
            label = int(label.strip())
        except ValueError:
            if header is None:
                raise DataError(
                    "no_label",
                    f"{path}: label column {label!r} not found: the file has no header row; "
                    "give the label as a column index (e.g. -1 for the last column)",
                    path=str(path),
                ) from None
            raise DataError(
                "no_label",
                f"{path}: label column {label!r} not found; the columns are {header}",
                path=str(path),
            ) from None
    if not isinstance(label, int | np.integer):
        raise DataError("no_label", f"{path}: label must be a column name or index, got {label!r}")
    if not -ncols <= label < ncols:
        raise DataError(
            "no_label",
            f"{path}: label column index {label} is out of range for {ncols} columns",
            path=str(path),
        )
    return int(label) % ncols


def load_csv(
    path: str | os.PathLike[str],
    *,
    label: str | int = -1,
    task: str = "classification",
) -> Dataset:
    """Read a CSV of numbers, one sample per row, the label in column ``label``.

    The first row is a header when none of its cells is a number; a first row that
    mixes numbers and text is refused as ambiguous. Blank lines are skipped. ``label``
    is a column name (needs a header), an index (negative counts from the end; default
    the last column), or an index written as text (``"-1"``).
    """
    path = Path(path)
    kind = canonical_task(task)
    _check_file(path)
    try:
        rows: list[tuple[int, list[str]]] = []  # (line number, stripped cells)
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            for row in reader:
                cells = [c.strip() for c in row]
                if any(cells):  # blank lines are skipped
                    rows.append((reader.line_num, cells))
    except UnicodeDecodeError as exc:
        raise DataError("bad_file", f"{path}: not UTF-8 text ({exc.reason})") from exc
    except csv.Error as exc:
        raise DataError("bad_file", f"{path}: not valid CSV ({exc})") from exc
    except OSError as exc:
        raise DataError("no_file", f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not rows:
        raise DataError("empty_file", f"{path}: the file is empty", path=str(path))

    header: list[str] | None = None
    first_line, first = rows[0]
    numeric = [_parse_cell(c) is not None for c in first]
    if not any(numeric):
        header = first
        rows = rows[1:]
    elif not all(numeric):
        col = numeric.index(False)
        raise DataError(
            "bad_value",
            f"{path}:{first_line}: the first row mixes numbers and text (column {col + 1} "
            f"is {first[col]!r}); a header row must name every column and a data row "
            "must be all numbers",
            path=str(path),
            line=first_line,
        )
    if not rows:
        raise DataError("no_rows", f"{path}: the file has a header but no data rows")
    ncols = len(header if header is not None else rows[0][1])
    if ncols < 2:
        raise DataError(
            "bad_shape",
            f"{path}: need at least two columns (features and a label), found {ncols}",
        )
    label_col = _label_index(label, header, ncols, path)

    values = np.empty((len(rows), ncols), dtype=np.float64)
    for r, (line, row) in enumerate(rows):
        if len(row) != ncols:
            raise DataError(
                "ragged",
                f"{path}:{line}: row has {len(row)} columns, expected {ncols}",
                path=str(path),
                line=line,
            )
        for c, cell in enumerate(row):
            v = _parse_cell(cell)
            if v is None or not math.isfinite(v):
                name = f" ({header[c]!r})" if header is not None else ""
                what = (
                    "is empty"
                    if not cell
                    else f"{cell!r} is not a number"
                    if v is None
                    else f"{cell!r} is not finite"
                )
                raise DataError(
                    "bad_value" if v is None else "not_finite",
                    f"{path}:{line}: column {c + 1}{name}: {what}",
                    path=str(path),
                    line=line,
                    column=c + 1,
                )
            values[r, c] = v

    lines = [line for line, _ in rows]
    x64 = values[:, [c for c in range(ncols) if c != label_col]]
    x = _to_f32(x64)
    too_big = ~np.isfinite(x)
    if too_big.any():
        r, c = np.argwhere(too_big)[0]
        raise DataError(
            "not_finite", f"{path}:{lines[r]}: value {x64[r, c]} does not fit in float32"
        )
    y = _targets(values[:, label_col], kind, lambda i: f"{path}:{lines[i]}")
    return Dataset(x, y)


def save_csv(path: str | os.PathLike[str], ds: Dataset, *, header: bool = True) -> None:
    """Write ``ds`` as CSV, features then the label last (header ``x0, x1, ..., label``,
    or ``y0`` for a regression target), so that ``load_csv`` reads back exactly the same
    values: float32 written with 9 significant digits round-trips. A multi-output
    regression set is written with one ``y{j}`` column per output, but ``load_csv``
    reads a single label column."""
    path = Path(path)
    n_out = 1 if ds.y.ndim == 1 else ds.y.shape[1]
    with _atomic(path, "w") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        if header:
            names = [f"x{i}" for i in range(ds.n_features)]
            names += ["label"] if ds.y.ndim == 1 else [f"y{j}" for j in range(n_out)]
            writer.writerow(names)
        ys = ds.y.reshape(len(ds), -1)
        for xrow, yrow in zip(ds.x, ys, strict=True):
            cells = [f"{v:.9g}" for v in xrow.tolist()]
            cells += (
                [str(v) for v in yrow.tolist()]
                if ds.y.ndim == 1
                else [f"{v:.9g}" for v in yrow.tolist()]
            )
            writer.writerow(cells)


def load_npz(path: str | os.PathLike[str], *, task: str = "classification") -> Dataset:
    """Read an ``.npz`` holding arrays ``x`` (n, features) and ``y`` (n,) or (n, 1)."""
    path = Path(path)
    kind = canonical_task(task)
    _check_file(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("x", "y") if k not in npz.files]
            if missing:
                raise DataError(
                    "missing_array",
                    f"{path}: needs arrays 'x' and 'y', missing {missing} "
                    f"(it holds {sorted(npz.files)})",
                    path=str(path),
                )
            x, y = npz["x"], npz["y"]
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise DataError("bad_file", f"{path}: not a readable .npz file ({exc})") from exc
    except OSError as exc:
        raise DataError("no_file", f"{path}: cannot read ({exc.strerror or exc})") from exc

    if x.dtype.kind not in "biuf" or x.ndim != 2:
        raise DataError(
            "bad_shape", f"{path}: x must be a 2-D array of numbers, got {x.dtype} {x.shape}"
        )
    if y.dtype.kind not in "biuf" or not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
        raise DataError(
            "bad_shape",
            f"{path}: y must be numbers of shape (n,) or (n, 1), got {y.dtype} {y.shape}",
        )
    if len(x) != len(y):
        raise DataError("bad_shape", f"{path}: x has {len(x)} rows but y has {len(y)}")
    if len(x) == 0 or x.shape[1] == 0:
        raise DataError(
            "bad_shape", f"{path}: need at least one row and one feature, x is {x.shape}"
        )
    xf = _to_f32(x)
    bad = ~np.isfinite(xf)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(
            "not_finite", f"{path}: x[{r}, {c}] is {x[r, c]} (values must be finite float32)"
        )
    yf = y.reshape(-1).astype(np.float64)
    if not np.isfinite(yf).all():
        r = int(np.argmin(np.isfinite(yf)))
        raise DataError("not_finite", f"{path}: y[{r}] is {yf[r]} (values must be finite)")
    return Dataset(xf, _targets(yf, kind, lambda i: f"{path}: y[{i}]"))


def save_npz(path: str | os.PathLike[str], ds: Dataset) -> None:
    """Write ``ds`` as an ``.npz`` with arrays ``x`` and ``y``, at exactly ``path``."""
    with _atomic(Path(path), "wb") as fh:
        np.savez(fh, x=ds.x, y=ds.y)


@contextmanager
def _atomic(path: Path, mode: str) -> Iterator[IO]:
    """Write to a temporary file beside ``path``; rename it over ``path`` on success."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        if "b" in mode:
            fh = os.fdopen(fd, mode)
        else:
            fh = os.fdopen(fd, mode, encoding="utf-8", newline="")
        with fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def load_dataset(
    path: str | os.PathLike[str],
    *,
    label: str | int = -1,
    task: str = "classification",
) -> Dataset:
    """Load a ``.csv`` (see :func:`load_csv`) or ``.npz`` (see :func:`load_npz`; ``label``
    does not apply) data file, chosen by its suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return load_csv(path, label=label, task=task)
    if suffix == ".npz":
        return load_npz(path, task=task)
    raise DataError(
        "bad_suffix",
        f"{path}: unknown data file type {suffix or '(no suffix)'!r}; use .csv or .npz",
        path=str(path),
    )


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
