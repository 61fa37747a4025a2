"""A fleet's data schema: which columns are features, in what order, and what the label means.

Written once by ``fedmq data schema FILE.csv --label NAME`` from a sample of the data,
given to the aggregator (``--schema``), and carried to every device inside the global
model's ``arch`` (feature names, label column, class names). A device reads its own CSV
by column name through it, so column order on a device does not matter, and a label
written as text ("walking", "idle") becomes the class index the model learns.

Classes are ordered by name; labels that are all integers are ordered by value ("2"
before "10"), any other labels as text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmq.errors import DataError

TASKS = ("classification", "regression")
MAX_COLUMNS = 4096
MAX_CLASSES = 1024
MAX_NAME = 128
VERSION = 1


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise DataError(
            "bad_schema",
            f"{what} must be a non-empty name of at most {MAX_NAME} characters, got {name!r}",
        )
    if any(not ch.isprintable() for ch in name):
        raise DataError("bad_schema", f"{what} {name!r} contains control characters")
    return name


def _number(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def order_classes(labels: Sequence[str]) -> tuple[str, ...]:
    """Distinct labels ordered by name: by value when every one is an integer."""
    distinct = set(labels)
    as_int: dict[str, int] = {}
    for label in distinct:
        value = _number(label)
        if value is None or not value.is_integer():
            return tuple(sorted(distinct))
        as_int[label] = int(value)
    return tuple(sorted(distinct, key=lambda s: (as_int[s], s)))


@dataclass(frozen=True)
class Schema:
    features: tuple[str, ...]
    label: str
    task: str
    classes: tuple[str, ...] | None = None  # classification only

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))
        if self.task not in TASKS:
            raise DataError("bad_schema", f"task must be one of {TASKS}, got {self.task!r}")
        if not 1 <= len(self.features) <= MAX_COLUMNS:
            raise DataError("bad_schema", f"a schema needs 1..{MAX_COLUMNS} features")
        for f in self.features:
            _check_name(f, "feature")
        _check_name(self.label, "label column")
        if len(set(self.features)) != len(self.features):
            raise DataError("bad_schema", "feature names must be distinct")
        if self.label in self.features:
            raise DataError("bad_schema", f"the label {self.label!r} cannot also be a feature")
        if self.task == "classification":
            if self.classes is None or not 2 <= len(self.classes) <= MAX_CLASSES:
                raise DataError("bad_schema", f"classification needs 2..{MAX_CLASSES} class names")
            for c in self.classes:
                _check_name(c, "class")
            if len(set(self.classes)) != len(self.classes):
                raise DataError("bad_schema", "class names must be distinct")
        elif self.classes is not None:
            raise DataError("bad_schema", "a regression schema has no classes")

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.classes is not None else 1

    # -- inference --------------------------------------------------------------------

    @classmethod
    def infer(
        cls,
        header: Sequence[str],
        rows: Sequence[Sequence[str]],
        label: str,
        task: str | None = None,
    ) -> Schema:
        """The schema of a table: every column but ``label`` is a (numeric) feature."""
        if label not in header:
            raise DataError(
                "no_label", f"label column {label!r} not found; the columns are {list(header)}"
            )
        li = list(header).index(label)
        labels = [row[li] for row in rows if row[li] != ""]
        if not labels:
            raise DataError("no_label", f"label column {label!r} has no values")
        numeric = all(_number(v) is not None for v in labels)
        if task is None:
            integral = numeric and all(float(v).is_integer() for v in labels)
            task = "classification" if (not numeric or integral) else "regression"
        if task == "regression" and not numeric:
            bad = next(v for v in labels if _number(v) is None)
            raise DataError("bad_label", f"regression needs numeric labels; {label!r} has {bad!r}")
        features = [h for i, h in enumerate(header) if i != li]
        text = [
            h
            for i, h in enumerate(header)
            if i != li and any(_number(r[i]) is None and r[i] != "" for r in rows)
        ]
        if text:
            raise DataError("bad_value", f"feature columns must be numbers; not so: {text}")
        classes = order_classes(labels) if task == "classification" else None
        if classes is not None and len(classes) < 2:
            raise DataError(
                "one_class",
                f"label column {label!r} holds one class only ({classes[0]!r}); "
                "a classifier needs examples of at least two",
            )
        return cls(tuple(features), label, task, classes)

    @classmethod
    def from_csv(cls, path: str | Path, label: str, task: str | None = None) -> Schema:
        """The schema of the CSV at ``path`` (first row the header), label column ``label``;
        DataError for a file that cannot be read as a table or described by a schema."""
        from fedmq.data.table import read_table  # fedmq.data imports this module

        table = read_table(path)
        assert table.header is not None
        try:
            return cls.infer(table.header, table.rows, label, task)
        except DataError as exc:
            raise DataError(exc.reason, f"{path}: {exc.message}", **exc.fields) from exc

    # -- labels -----------------------------------------------------------------------

    def class_index(self) -> dict[str, int]:
        """Label text -> class index; integer labels also match as numbers ("1.0" is "1")."""
        assert self.classes is not None
        index = {c: i for i, c in enumerate(self.classes)}
        for c, i in list(index.items()):
            value = _number(c)
            if value is not None and value.is_integer():
                index.setdefault(str(int(value)), i)
        return index

    def encode_label(self, cell: str, where: str) -> int:
        index = self.class_index()
        value = _number(cell)
        key = str(int(value)) if value is not None and value.is_integer() else cell
        if cell in index:
            return index[cell]
        if key in index:
            return index[key]
        raise DataError(
            "unknown_class",
            f"{where}: label {cell!r} is not one of the classes {list(self.classes or ())}",
        )

    # -- files ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": VERSION,
            "features": list(self.features),
            "label": self.label,
            "task": self.task,
        }
        if self.classes is not None:
            out["classes"] = list(self.classes)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "schema") -> Schema:
        if not isinstance(data, Mapping):
            raise DataError("bad_schema", f"{where}: a schema is a JSON object")
        if data.get("version") != VERSION:
            raise DataError(
                "bad_schema", f"{where}: schema version {data.get('version')!r} is not {VERSION}"
            )
        unknown = sorted(set(data) - {"version", "features", "label", "task", "classes"})
        if unknown:
            raise DataError("bad_schema", f"{where}: unknown schema keys {unknown}")
        features, classes = data.get("features"), data.get("classes")
        if not isinstance(features, list) or (
            classes is not None and not isinstance(classes, list)
        ):
            raise DataError("bad_schema", f"{where}: features and classes must be lists")
        try:
            return cls(
                tuple(features),
                data.get("label"),
                data.get("task"),
                None if classes is None else tuple(classes),
            )  # type: ignore[arg-type]
        except DataError as exc:
            raise DataError("bad_schema", f"{where}: {exc.message}") from exc

    def save(self, path: str | Path) -> None:
        from fedmq.files import atomic_write

        atomic_write(Path(path), (json.dumps(self.to_dict(), indent=2) + "\n").encode())

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise DataError("no_file", f"{p}: no such schema file") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError("no_file", f"{p}: cannot read the schema ({exc})") from exc
        if len(text) > 1_000_000:
            raise DataError("bad_schema", f"{p}: a schema file is at most 1 MB")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(
                "bad_schema", f"{p}: not JSON ({exc.msg} at line {exc.lineno})"
            ) from exc
        return cls.from_dict(data, str(p))
