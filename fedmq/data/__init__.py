"""Data sets on disk: CSV and NPZ files of features and labels, read defensively.

The edge agent imports this package on a Raspberry Pi, so it needs NumPy and the
standard library only. Every way a file can be unusable (missing, empty, ragged rows,
text where a number belongs, NaN/inf, no label column, a label that is not a class)
raises :class:`~fedmq.errors.DataError` with the file and, for CSV, the line.

A data set is either for classification (``y``: int64 class indices, shape ``(n,)``)
or for regression (``y``: float32 targets, shape ``(n, outputs)``). ``task=`` takes the
names the configs use, ``"classification"`` and ``"regression"``, and the short forms
``"classify"`` and ``"regress"``.

With a :class:`~fedmq.schema.Schema` (``schema=``), a CSV's columns are read by name in
the schema's order and text labels are mapped to class indices; see
:func:`load_csv_with_schema` for the reasons a file can fail it.

By concern: ``dataset`` (the :class:`Dataset` invariants, :func:`standardize`,
:func:`check_fits` and :func:`check_schema`), ``table`` (the one CSV reader: a file as
a text :class:`Table`, and :func:`describe`), ``csv_files`` and ``npz_files`` (one file
format each); import them from here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from fedmq.data.csv_files import load_csv, load_csv_with_schema, load_features, save_csv
from fedmq.data.dataset import Dataset, canonical_task, check_fits, check_schema, standardize
from fedmq.data.npz_files import load_npz, save_npz
from fedmq.data.table import Table, describe, read_table
from fedmq.errors import DataError

if TYPE_CHECKING:
    from fedmq.schema import Schema

__all__ = [
    "Dataset",
    "Table",
    "canonical_task",
    "check_fits",
    "check_schema",
    "describe",
    "load_csv",
    "load_csv_with_schema",
    "load_dataset",
    "load_features",
    "load_npz",
    "read_table",
    "save_csv",
    "save_npz",
    "standardize",
]


def load_dataset(
    path: str | os.PathLike[str],
    *,
    label: str | int | None = None,
    task: str | None = None,
    schema: Schema | None = None,
) -> Dataset:
    """Load a ``.csv`` (see :func:`load_csv`) or ``.npz`` (see :func:`load_npz`; ``label``
    does not apply) data file, chosen by its suffix, through ``schema`` if given."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return load_csv(path, label=label, task=task, schema=schema)
    if suffix == ".npz":
        return load_npz(path, task=task, schema=schema)
    raise DataError(
        "bad_suffix",
        f"{path}: unknown data file type {suffix or '(no suffix)'!r}; use .csv or .npz",
        path=str(path),
    )
