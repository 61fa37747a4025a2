"""CSV data files: one sample a row, a header row (optional without a schema), the label in
one column.

Without a schema, columns are taken by position (the label by name or index, every
other column a feature). With a :class:`~fedmq.schema.Schema`, columns are taken by
name in the schema's order, so a device's file may order them as it likes, and a label
written as text becomes its class index.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedmq.data.dataset import Dataset, canonical_task, finite_f32, targets
from fedmq.data.table import Rows, Table, make_table, parse_number, read_rows, read_table
from fedmq.errors import DataError
from fedmq.files import atomic_open

if TYPE_CHECKING:
    from fedmq.schema import Schema


def load_csv(
    path: str | os.PathLike[str],
    *,
    label: str | int | None = None,
    task: str | None = None,
    schema: Schema | None = None,
) -> Dataset:
    """Read a CSV of numbers, one sample per row, the label in column ``label``.

    Without ``schema``: the first row is a header when none of its cells is a number; a
    first row that mixes numbers and text is refused as ambiguous. Blank lines are
    skipped. ``label`` is a column name (needs a header), an index (negative counts
    from the end; default the last column), or an index written as text (``"-1"``);
    ``task`` defaults to classification, with labels already class indices.

    With ``schema`` (see :func:`load_csv_with_schema`), ``label`` and ``task`` may be
    left out; given, they must agree with it.
    """
    path = Path(path)
    if schema is not None:
        return load_csv_with_schema(path, schema, label=label, task=task)
    kind = canonical_task("classification" if task is None else task)
    header, rows = _split_header(read_rows(path), path)
    table = make_table(path, header, rows)
    if table.width < 2:
        raise DataError(
            "bad_shape",
            f"{path}: need at least two columns (features and a label), found {table.width}",
        )
    label_col = _label_index(-1 if label is None else label, header, table.width, path)
    features = [c for c in range(table.width) if c != label_col]
    x = _features(table, features)
    y = targets(_numbers(table, [label_col])[:, 0], kind, table.where)
    return Dataset(x, y)


def load_csv_with_schema(
    path: str | os.PathLike[str],
    schema: Schema,
    *,
    label: str | int | None = None,
    task: str | None = None,
) -> Dataset:
    """Read the CSV at ``path`` through ``schema``: its feature columns by name, in the
    schema's order, and its label column mapped to class indices (classification) or
    read as float targets (regression).

    DataError reasons: ``missing_feature`` / ``extra_feature`` (naming the columns),
    ``no_label``, ``unknown_class``, ``wrong_label`` / ``wrong_task`` (``label`` or
    ``task`` given and not the schema's), and every reason of :func:`read_table`.
    """
    path = Path(path)
    _check_agrees(schema, label, task, path)
    table = read_table(path)
    assert table.header is not None
    columns = {name: i for i, name in enumerate(table.header)}
    if schema.label not in columns:
        raise DataError(
            "no_label",
            f"{path}: label column {schema.label!r} not found; the columns are {table.header}",
            path=str(path),
        )
    missing = [f for f in schema.features if f not in columns]
    if missing:
        raise DataError(
            "missing_feature", f"{path}: feature column(s) {missing} missing", path=str(path)
        )
    known = {*schema.features, schema.label}
    extra = [name for name in table.header if name not in known]
    if extra:
        raise DataError(
            "extra_feature",
            f"{path}: column(s) {extra} are not in the schema (its features are "
            f"{list(schema.features)}, its label {schema.label!r})",
            path=str(path),
        )
    x = _features(table, [columns[f] for f in schema.features])
    return Dataset(x, _schema_labels(table, columns[schema.label], schema))


def load_features(path: str | os.PathLike[str], label: str) -> tuple[list[str], np.ndarray]:
    """Every column of the CSV at ``path`` but ``label``, named by its header, in the
    file's order: the rows a device's feature statistics describe before the fleet's
    schema reaches it. The labels are not read, so text class names need no schema.
    """
    path = Path(path)
    table = read_table(path)
    assert table.header is not None
    if label not in table.header:
        raise DataError(
            "no_label",
            f"{path}: label column {label!r} not found; the columns are {table.header}",
            path=str(path),
        )
    cols = [i for i, name in enumerate(table.header) if name != label]
    if not cols:
        raise DataError("bad_shape", f"{path}: no feature columns beside {label!r}")
    return [table.header[i] for i in cols], _features(table, cols)


def _check_agrees(schema: Schema, label: str | int | None, task: str | None, path: Path) -> None:
    if label is not None and label != schema.label:
        raise DataError(
            "wrong_label",
            f"{path}: label {label!r} given, but the schema's label column is {schema.label!r}",
        )
    if task is not None and canonical_task(task) != schema.task:
        raise DataError(
            "wrong_task", f"{path}: task {task!r} given, but the schema's task is {schema.task}"
        )


def _schema_labels(table: Table, col: int, schema: Schema) -> np.ndarray:
    name = schema.label
    for r, cell in enumerate(table.column(col)):
        if cell == "":
            raise DataError("bad_value", f"{table.where(r)}: label column {name!r} is empty")
    if schema.task == "regression":
        return targets(_numbers(table, [col])[:, 0], "regression", table.where)
    index: dict[str, int] = {}  # encode each distinct cell once: a file has few classes
    for r, cell in enumerate(table.column(col)):
        if cell not in index:
            index[cell] = schema.encode_label(cell, table.where(r))
    return np.array([index[c] for c in table.column(col)], dtype=np.int64)


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


def _split_header(rows: Rows, path: Path) -> tuple[list[str] | None, Rows]:
    """The header (a first row without numbers), if any, and the data rows."""
    first_line, first = rows[0]
    numeric = [parse_number(c) is not None for c in first]
    if not any(numeric):
        return first, rows[1:]
    if not all(numeric):
        col = numeric.index(False)
        raise DataError(
            "bad_value",
            f"{path}:{first_line}: the first row mixes numbers and text (column {col + 1} "
            f"is {first[col]!r}); a header row must name every column and a data row "
            "must be all numbers",
            path=str(path),
            line=first_line,
        )
    return None, rows


def _features(table: Table, cols: list[int]) -> np.ndarray:
    values = _numbers(table, cols)
    return finite_f32(
        values, lambda i: f"{table.where(i[0])}: value {values[i]} does not fit in float32"
    )


def _numbers(table: Table, cols: list[int]) -> np.ndarray:
    """Columns ``cols`` of ``table`` as float64, ``(rows, len(cols))``; DataError at the
    first cell that is empty, not a number, or not finite."""
    values = np.empty((len(table.rows), len(cols)), dtype=np.float64)
    for r, row in enumerate(table.rows):
        for j, c in enumerate(cols):
            cell = row[c]
            v = parse_number(cell)
            if v is None or not math.isfinite(v):
                name = f" ({table.header[c]!r})" if table.header is not None else ""
                what = (
                    "is empty"
                    if not cell
                    else f"{cell!r} is not a number"
                    if v is None
                    else f"{cell!r} is not finite"
                )
                raise DataError(
                    "bad_value" if v is None else "not_finite",
                    f"{table.where(r)}: column {c + 1}{name}: {what}",
                    path=str(table.path),
                    line=table.lines[r],
                    column=c + 1,
                )
            values[r, j] = v
    return values


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
