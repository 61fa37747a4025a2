"""NPZ data files: arrays ``x`` and ``y`` in NumPy's zip format, read without pickle."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedmq.data.dataset import Dataset, canonical_task, check_schema, finite_f32, targets
from fedmq.data.table import check_file
from fedmq.errors import DataError
from fedmq.files import atomic_open

if TYPE_CHECKING:
    from fedmq.schema import Schema


def load_npz(
    path: str | os.PathLike[str],
    *,
    task: str | None = None,
    schema: Schema | None = None,
) -> Dataset:
    """Read an ``.npz`` holding arrays ``x`` (n, features) and ``y`` (n,) or (n, 1).

    ``task`` defaults to the schema's, else classification. An NPZ has no column names,
    so a ``schema`` is checked by count: see :func:`~fedmq.data.dataset.check_schema`.
    """
    path = Path(path)
    if schema is not None and task is not None and canonical_task(task) != schema.task:
        raise DataError(
            "wrong_task", f"{path}: task {task!r} given, but the schema's task is {schema.task}"
        )
    default = schema.task if schema is not None else "classification"
    kind = canonical_task(default if task is None else task)
    check_file(path)
    x, y = _arrays(path)
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
    xf = finite_f32(
        x, lambda i: f"{path}: x[{i[0]}, {i[1]}] is {x[i]} (values must be finite float32)"
    )
    yf = y.reshape(-1).astype(np.float64)
    if not np.isfinite(yf).all():
        r = int(np.argmin(np.isfinite(yf)))
        raise DataError("not_finite", f"{path}: y[{r}] is {yf[r]} (values must be finite)")
    ds = Dataset(xf, targets(yf, kind, lambda i: f"{path}: y[{i}]"))
    return ds if schema is None else check_schema(ds, schema, str(path))


def save_npz(path: str | os.PathLike[str], ds: Dataset) -> None:
    """Write ``ds`` as an ``.npz`` with arrays ``x`` and ``y``, at exactly ``path``."""
    with atomic_open(path, mode=0o600) as fh:
        np.savez(fh, x=ds.x, y=ds.y)


def _arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``x`` and ``y`` of the file, unchecked."""
    import zipfile  # here: a CSV fleet's agents never need it at start

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
            return npz["x"], npz["y"]
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise DataError("bad_file", f"{path}: not a readable .npz file ({exc})") from exc
    except OSError as exc:
        raise DataError("no_file", f"{path}: cannot read ({exc.strerror or exc})") from exc
