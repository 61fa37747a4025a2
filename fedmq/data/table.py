"""CSV files as text tables: the one CSV reader behind data loading, schemas and inspection.

A :class:`Table` is the file's cells as stripped text, with line numbers for error
messages; nothing is parsed as a number yet. ``load_csv`` turns a table into arrays,
``Schema.from_csv`` infers a schema from one, and ``fedmq data inspect`` describes one.
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmq.errors import DataError
from fedmq.schema import order_classes

Rows = list[tuple[int, list[str]]]  # (line number, stripped cells)


@dataclass(frozen=True)
class Table:
    """A CSV as text: ``header`` (None for a file without one), then ``rows`` of cells,
    every row as wide as the table; ``lines[i]`` is the file line of ``rows[i]``."""

    path: Path
    header: list[str] | None
    rows: list[list[str]]
    lines: list[int]

    @property
    def width(self) -> int:
        return len(self.header) if self.header is not None else len(self.rows[0])

    def column(self, index: int) -> list[str]:
        return [row[index] for row in self.rows]

    def where(self, row: int) -> str:
        """``path:line`` of row ``row``, for error messages."""
        return f"{self.path}:{self.lines[row]}"


def parse_number(cell: str) -> float | None:
    """The cell as a float (possibly inf or NaN), or None when it is not a number."""
    try:
        return float(cell)
    except ValueError:
        return None


def check_file(path: Path) -> None:
    """DataError unless ``path`` is an existing regular file."""
    if not path.exists():
        raise DataError("no_file", f"{path}: no such file", path=str(path))
    if not path.is_file():
        raise DataError("no_file", f"{path}: not a regular file", path=str(path))


def read_rows(path: str | os.PathLike[str]) -> Rows:
    """The non-blank rows of the CSV at ``path``, cells stripped; at least one."""
    path = Path(path)
    check_file(path)
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


def make_table(path: Path, header: list[str] | None, rows: Rows) -> Table:
    """A table of ``rows`` under ``header``; DataError for no rows or a ragged row."""
    if not rows:
        raise DataError("no_rows", f"{path}: the file has a header but no data rows")
    width = len(header) if header is not None else len(rows[0][1])
    for line, row in rows:
        if len(row) != width:
            raise DataError(
                "ragged",
                f"{path}:{line}: row has {len(row)} columns, expected {width}",
                path=str(path),
                line=line,
            )
    return Table(path, header, [r for _, r in rows], [line for line, _ in rows])


def read_table(path: str | os.PathLike[str]) -> Table:
    """The CSV at ``path`` as a table whose first row names the columns.

    DataError when the first row is all numbers (no header), a column has no name or
    the same name twice, a row is ragged, or there are no data rows.
    """
    path = Path(path)
    rows = read_rows(path)
    first_line, header = rows[0]
    if all(parse_number(c) is not None for c in header):
        raise DataError(
            "no_header",
            f"{path}:{first_line}: the first row must name the columns, it holds only numbers",
            path=str(path),
        )
    unnamed = [i + 1 for i, name in enumerate(header) if not name]
    if unnamed:
        raise DataError("bad_header", f"{path}:{first_line}: column(s) {unnamed} have no name")
    twice = sorted(name for name, n in Counter(header).items() if n > 1)
    if twice:
        raise DataError("bad_header", f"{path}:{first_line}: columns named twice: {twice}")
    return make_table(path, header, rows[1:])


def describe(table: Table, label: str | None = None) -> dict[str, Any]:
    """Per column: its type (``number`` when every present cell is a finite number, else
    ``text``), min and max (numbers), and missing (empty) cells; with ``label``, that
    column's class counts when it looks like classes (text or integers)."""
    assert table.header is not None
    columns = []
    for i, name in enumerate(table.header):
        cells = [c for c in table.column(i) if c != ""]
        values = [parse_number(c) for c in cells]
        numeric = all(v is not None and math.isfinite(v) for v in values)
        col: dict[str, Any] = {"name": name, "type": "number" if numeric else "text"}
        if numeric and values:
            col["min"], col["max"] = min(values), max(values)  # type: ignore[type-var]
        col["missing"] = len(table.rows) - len(cells)
        columns.append(col)
    out: dict[str, Any] = {"file": str(table.path), "rows": len(table.rows), "columns": columns}
    if label is not None:
        out.update(_label_summary(table, label))
    return out


def _label_summary(table: Table, label: str) -> dict[str, Any]:
    assert table.header is not None
    if label not in table.header:
        raise DataError(
            "no_label",
            f"{table.path}: label column {label!r} not found; the columns are {table.header}",
        )
    cells = [c for c in table.column(table.header.index(label)) if c != ""]
    values = [parse_number(c) for c in cells]
    numeric = cells and all(v is not None and math.isfinite(v) for v in values)
    if numeric and not all(float(v).is_integer() for v in values):  # type: ignore[arg-type]
        return {"label": label, "task": "regression"}
    counts = Counter(cells)
    classes = {c: counts[c] for c in order_classes(cells)}
    return {"label": label, "task": "classification", "classes": classes}
