"""CSV data files: one sample a row, an optional header, the label in one column."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from fedmq.data.dataset import Dataset, canonical_task, check_file, finite_f32, targets
from fedmq.errors import DataError
from fedmq.files import atomic_open

Rows = list[tuple[int, list[str]]]  # (line number, stripped cells)


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
    check_file(path)
    header, rows = _split_header(_read_rows(path), path)
    ncols = len(header if header is not None else rows[0][1])
    if ncols < 2:
        raise DataError(
            "bad_shape",
            f"{path}: need at least two columns (features and a label), found {ncols}",
        )
    label_col = _label_index(label, header, ncols, path)
    values = _values(rows, header, ncols, path)
    lines = [line for line, _ in rows]
    x64 = values[:, [c for c in range(ncols) if c != label_col]]
    x = finite_f32(x64, lambda i: f"{path}:{lines[i[0]]}: value {x64[i]} does not fit in float32")
    y = targets(values[:, label_col], kind, lambda i: f"{path}:{lines[i]}")
    return Dataset(x, y)


def save_csv(path: str | os.PathLike[str], ds: Dataset, *, header: bool = True) -> None:
    """Write ``ds`` as CSV, features then the label last (header ``x0, x1, ..., label``,
    or ``y0`` for a regression target), so that ``load_csv`` reads back exactly the same
    values: float32 written with 9 significant digits round-trips. A multi-output
    regression set is written with one ``y{j}`` column per output, but ``load_csv``
    reads a single label column."""
    n_out = 1 if ds.y.ndim == 1 else ds.y.shape[1]
    with atomic_open(path, text=True, mode=0o600) as fh:
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


def _read_rows(path: Path) -> Rows:
    """The non-blank rows of ``path``, cells stripped; at least one."""
    try:
        rows: Rows = []
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
    return rows


def _split_header(rows: Rows, path: Path) -> tuple[list[str] | None, Rows]:
    """The header (a first row without numbers), if any, and the data rows (at least one)."""
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
    return header, rows


def _values(rows: Rows, header: list[str] | None, ncols: int, path: Path) -> np.ndarray:
    """The cells as float64, ``(rows, ncols)``; DataError at the first bad cell."""
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
    return values


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
