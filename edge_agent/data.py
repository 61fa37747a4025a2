"""This device's data, read as the model it trains on says.

A model whose ``arch`` carries a schema names the feature columns, the label column and
the classes, so the CSV is read by name through it (and read again only when the schema
changes); a model without one gets the file as the agent first read it, by position.
Either way the data must fit the model, or the agent reports why in its status.

The feature statistics need no model: a CSV's feature columns (every column but the
label, named by the header) are read on their own, so a file with text class names
sends its statistics before the schema that can read its labels arrives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedmq.data import Dataset, check_fits, load_dataset, load_features
from fedmq.errors import DataError
from fedmq.model import Arch
from fedmq.schema import Schema

Columns = tuple[list[str] | None, np.ndarray]
DEFERRABLE = frozenset({"bad_value", "bad_label", "no_label", "unknown_class"})


class LocalData:
    """The data file at ``path``; ``plain`` is its reading without a schema (None when the
    file needs one, e.g. text class names)."""

    def __init__(
        self,
        path: Path | None,
        plain: Dataset | None,
        plain_error: str = "",
        columns: Columns | None = None,
    ) -> None:
        self.path = path
        self.plain = plain
        self._plain_error = plain_error
        self.columns = columns  # the CSV's named feature columns, labels unread
        self._read: tuple[Schema, Dataset] | None = None

    @classmethod
    def open(cls, path: Path, label: str, task: str) -> LocalData:
        """Read ``path`` without a schema; a file that needs one waits for the model's."""
        columns = _columns(path, label)
        try:
            return cls(path, load_dataset(path, label=label, task=task), columns=columns)
        except DataError as exc:
            # A missing or unreadable file stops the agent; cells a schema may explain
            # (text class names, a label column named otherwise) wait for the model's.
            if path.suffix.lower() != ".csv" or exc.reason not in DEFERRABLE:
                raise
            if exc.reason != "no_label":
                Schema.from_csv(path, label)  # a damaged feature cell still stops the agent
            return cls(path, None, exc.message, columns)

    @property
    def samples(self) -> int:
        data = self._read[1] if self._read else self.plain
        return len(data) if data is not None else 0

    def stats_rows(self) -> Columns | None:
        """The rows the feature statistics describe, with their names when known: as
        the model's schema read them once one came, else the file's own columns."""
        if self._read is not None:
            return list(self._read[0].features), self._read[1].x
        if self.columns is not None:
            return self.columns
        return None if self.plain is None else (None, self.plain.x)

    def for_model(self, arch: Arch, version: int) -> Dataset:
        """The data ``arch`` trains on; DataError (its reason a status code) if none fits."""
        where = f"model v{version}"
        if arch.schema is not None and self.path is not None:
            if self._read is None or self._read[0] != arch.schema:
                self._read = (arch.schema, load_dataset(self.path, schema=arch.schema))
            data = self._read[1]
        elif self.plain is not None:
            data = self.plain
        else:
            raise DataError(
                "needs_schema",
                f"{where} carries no schema and the data cannot be read without one: "
                f"{self._plain_error}",
            )
        task = "classification" if arch.is_classifier else "regression"
        return check_fits(
            data, features=arch.n_inputs, task=task, outputs=arch.n_outputs, where=str(self.path)
        )


def _columns(path: Path, label: str) -> Columns | None:
    """The CSV's feature columns by name; None for a file they cannot be read from so
    (no header, the label given by position, an NPZ): its statistics go by position."""
    if path.suffix.lower() != ".csv":
        return None
    try:
        return load_features(path, label)
    except DataError:
        return None
