"""``fedmq data``: describe a fleet's own CSV data and write its schema."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any

import typer

data_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="Look at a CSV data file and write the fleet's data schema from it.\n\n"
    "Example: `fedmq data schema readings.csv --label activity --out schema.json`",
)


class TaskChoice(str, Enum):
    classification = "classification"
    regression = "regression"


@data_app.command("schema")
def schema_command(
    file: Path = typer.Argument(..., help="A CSV file whose first row names the columns."),
    label: str = typer.Option(..., "--label", help="Name of the label column."),
    task: TaskChoice = typer.Option(
        None,
        "--task",
        help="classification or regression (default: classification for text or integer "
        "labels, regression for real-valued ones).",
    ),
    out: Path = typer.Option(
        None, "--out", help="Write the schema to this file (default: print it)."
    ),
) -> None:
    """Write the data schema of FILE: feature names and order, label column, task, classes.

    Every column but the label is a feature and must hold numbers. Classes are ordered
    by name (integer labels by value). Give the schema to the aggregator (`--schema`).

    Example: `fedmq data schema readings.csv --label activity --out schema.json`
    """
    from fedmq.schema import Schema

    schema = Schema.from_csv(file, label, None if task is None else task.value)
    text = json.dumps(schema.to_dict(), indent=2)
    if out is None:
        typer.echo(text)
        return
    _save(schema, out)
    what = f"{len(schema.classes)} classes" if schema.classes is not None else "regression"
    typer.echo(f"schema of {file}: {schema.n_features} features, {what}; written to {out}")


def _save(schema: Any, out: Path) -> None:
    from fedmq.errors import DataError

    if out.is_dir():
        raise DataError("bad_out", f"--out {out} is a directory; give a file name")
    try:
        schema.save(out)
    except OSError as exc:
        raise DataError("bad_out", f"cannot write {out}: {exc.strerror or exc}") from exc


@data_app.command("inspect")
def inspect_command(
    file: Path = typer.Argument(..., help="A CSV file whose first row names the columns."),
    label: str = typer.Option(
        None, "--label", help="Name of the label column, to count its classes."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Print FILE's columns: type (number/text), min and max, missing values, and with
    --label the count of each class.

    Example: `fedmq data inspect readings.csv --label activity`
    """
    from fedmq.data import describe, read_table

    summary = describe(read_table(file), label)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    for line in _report(summary):
        typer.echo(line)


def _report(summary: dict[str, Any]) -> list[str]:
    columns = summary["columns"]
    width = max(6, *(len(c["name"]) for c in columns))
    lines = [
        f"{summary['file']}: {summary['rows']} rows, {len(columns)} columns",
        f"{'column':<{width}}  {'type':<6}  {'min':>12}  {'max':>12}  missing",
    ]
    for c in columns:
        lo, hi = (f"{c[k]:.6g}" if k in c else "-" for k in ("min", "max"))
        mark = "  (label)" if c["name"] == summary.get("label") else ""
        lines.append(
            f"{c['name']:<{width}}  {c['type']:<6}  {lo:>12}  {hi:>12}  {c['missing']:>7}{mark}"
        )
    if "classes" in summary:
        counts = ", ".join(f"{name}: {n}" for name, n in summary["classes"].items())
        lines.append(f"classes of {summary['label']!r} ({len(summary['classes'])}): {counts}")
    elif "label" in summary:
        lines.append(f"label {summary['label']!r}: real-valued (regression)")
    return lines


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
