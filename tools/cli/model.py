"""``fedmq model show|export|predict|history``: the retained global model, for an operator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import typer

from aggregator.history import read_history
from fedmq.config import BrokerSettings
from fedmq.data import Dataset, load_csv

# The same header detection and number parsing as load_csv.
from fedmq.data.csv_files import _features, _split_header
from fedmq.data.table import make_table, read_rows, read_table
from fedmq.errors import ConfigError, DataError, ModelError, WireError
from fedmq.history import HistorySummary
from fedmq.schema import Schema
from fedmq.wire import GlobalModel
from tools.cli.ops_common import (
    FLEET,
    JSON,
    TIMEOUT,
    broker_config,
    print_json,
    retained,
    snapshot,
    topics,
    utc,
)
from tools.cli.options import PASSWORD, with_settings
from tools.ops import model as ops

model_app = typer.Typer(
    help="The retained global model: summary, export, predictions, history.\n\n"
    "Example: `fedmq model show --broker mqtt://127.0.0.1:1883 --fleet default`",
    no_args_is_help=True,
)


def _retained_model(settings: Any, password: str | None, fleet: str, timeout: float) -> tuple:
    t = topics(fleet)
    snap, raw = snapshot(broker_config(settings, password), fleet, timeout, [t.model_onnx])
    if snap.model is None:
        why = snap.problems.get(t.model_global)
        detail = f" ({why})" if why else ""
        raise ModelError(
            "no_model", f"the broker retains no global model for fleet {fleet!r}{detail}"
        )
    return snap.model, snap.aggregator, raw.get(t.model_onnx)


@model_app.command("show")
@with_settings(BrokerSettings)
def show_command(
    fleet: str = FLEET,
    json: bool = JSON,
    timeout: float = TIMEOUT,
    password: str = PASSWORD,
    settings: Any = None,
) -> None:
    """Show the run id, version, architecture, digest, creation time and last evaluation.

    Example: `fedmq model show --broker mqtt://127.0.0.1:1883 --fleet default`
    """
    model, status, _ = _retained_model(settings, password, fleet, timeout)
    doc = ops.summary(model, status)
    if json:
        print_json(doc)
        return
    for key, value in doc.items():
        if key == "epsilon" and value is None:
            continue  # DP off: nothing to say
        if key == "preprocess" and value is not None:
            value = "standardize " + ", ".join(
                f"{name} (x - {f['mean']:.6g}) / {f['scale']:.6g}"
                for name, f in value["standardize"].items()
            )
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif key == "created_at":
            value = utc(value)
        typer.echo(f"{key:>11}: {'-' if value is None else value}")


@model_app.command("export")
@with_settings(BrokerSettings)
def export_command(
    format: str = typer.Option(..., "--format", help="onnx (the aggregator's export) or npz."),
    out: Path = typer.Option(..., "--out", help="File to write."),
    fleet: str = FLEET,
    json: bool = JSON,
    timeout: float = TIMEOUT,
    password: str = PASSWORD,
    settings: Any = None,
) -> None:
    """Export the retained model as ONNX or as NPZ (weights plus the architecture).

    Example: `fedmq model export --broker mqtt://127.0.0.1:1883 --format onnx --out model.onnx`
    """
    if format not in ops.FORMATS:
        raise ModelError("bad_format", f"--format must be one of {', '.join(ops.FORMATS)}")
    model, _, onnx_bytes = _retained_model(settings, password, fleet, timeout)
    ops.export(model, onnx_bytes, format, out)
    if json:
        doc = {"format": format, "out": str(out), "version": model.version, "run": model.run}
        print_json({**doc, "digest": model.digest, "bytes": out.stat().st_size})
        return
    typer.echo(f"wrote v{model.version} as {format} to {out}")


def load_rows(
    path: Path, model: GlobalModel, schema: Schema | None = None
) -> tuple[np.ndarray, Dataset | None]:
    """Raw feature rows, and the labelled data when the file has one more column (the label).

    With the fleet's schema, columns are taken by name and a text label is its class.
    """
    task = "classification" if model.arch.is_classifier else "regression"
    if schema is not None:
        table = read_table(path)  # a schema names columns: the file needs a header
        if table.header is not None and schema.label in table.header:
            data = load_csv(path, schema=schema)
            return data.x, data
        missing = [f for f in schema.features if f not in (table.header or ())]
        if missing:
            raise DataError("missing_feature", f"{path}: feature column(s) {missing} missing")
        return _features(table, [table.header.index(f) for f in schema.features]), None
    table = make_table(path, *_split_header(read_rows(path), path))
    width = table.width
    n = model.arch.n_inputs
    if width == n + 1:
        data = load_csv(path, task=task)
        return data.x, data
    if width == n:
        return _features(table, list(range(width))), None
    raise DataError("bad_features", f"{path}: {width} columns; the model takes {n} features")


@model_app.command("predict")
@with_settings(BrokerSettings)
def predict_command(
    input: Path = typer.Option(..., "--input", help="CSV of raw rows (label last, optional)."),
    schema_file: Path = typer.Option(
        None, "--schema", help="The fleet's schema.json: columns by name, class names."
    ),
    fleet: str = FLEET,
    json: bool = JSON,
    timeout: float = TIMEOUT,
    password: str = PASSWORD,
    settings: Any = None,
) -> None:
    """Predict raw rows with the retained ONNX model (standardization is inside it).

    With the label column present, also prints accuracy (or MSE) of that version.

    Example: `fedmq model predict --broker mqtt://127.0.0.1:1883 --input holdout.csv`
    """
    model, _, onnx_bytes = _retained_model(settings, password, fleet, timeout)
    if not onnx_bytes:
        raise ModelError("no_onnx", f"the broker retains no ONNX model for fleet {fleet!r}")
    found = ops.onnx_version(onnx_bytes)
    schema = None if schema_file is None else Schema.load(schema_file)
    x, data = load_rows(input, model, schema)
    outputs = ops.predict(onnx_bytes, x)
    names = schema.classes if schema is not None else None
    if model.arch.is_classifier:
        idx = np.argmax(outputs, axis=1)
        preds: list[Any] = [names[i] if names else int(i) for i in idx]
    else:
        preds = outputs.astype(np.float64).squeeze(-1).tolist()
    doc: dict[str, Any] = {"version": found if found is not None else model.version}
    doc["predictions"] = preds
    if data is not None:
        doc.update(ops.score(model, outputs, data))
    if json:
        print_json(doc)
        return
    for p in preds:
        typer.echo(p)
    metric = next((k for k in ("accuracy", "mse") if k in doc), None)
    if metric:
        typer.echo(
            f"{metric} of v{doc['version']} on {len(preds)} rows: {doc[metric]:.4f}", err=True
        )


def load_history(out_dir: Path) -> list[dict[str, Any]]:
    """history.jsonl (and its rotated parts, oldest first); damaged lines are skipped."""
    rows = read_history(out_dir)
    if not rows:
        raise DataError("no_history", f"{out_dir} holds no history.jsonl with versions")
    return rows


def retained_history(settings: Any, password: str | None, fleet: str, timeout: float) -> list:
    """The points of the aggregator's retained ``aggregator/history`` summary."""
    t = topics(fleet)
    raw = retained(broker_config(settings, password), [t.aggregator_history], timeout)
    payload = raw.get(t.aggregator_history)
    if payload is None:
        raise DataError(
            "no_history",
            f"the broker retains no history for fleet {fleet!r} (no aggregator has published"
            " a version yet); --out-dir reads the aggregator's own history.jsonl",
        )
    try:
        return HistorySummary.decode(payload).points()
    except WireError as exc:
        raise DataError("bad_history", f"the retained history cannot be read: {exc}") from exc


def plot(rows: list[dict[str, Any]], out: Path) -> str:
    """Accuracy (or loss) against time and against version, side by side; the metric."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError(
            "missing_dependency", "--plot needs matplotlib: pip install 'fedmq[plot]'"
        ) from exc
    metric = "accuracy" if any(r.get("accuracy") is not None for r in rows) else "loss"
    points = [r for r in rows if r.get(metric) is not None]
    if not points:
        raise DataError("no_history", "the history has no accuracy or loss to plot")
    t0 = points[0]["time"]
    fig, (by_time, by_version) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    by_time.plot([(r["time"] - t0) for r in points], [r[metric] for r in points])
    by_time.set_xlabel("seconds since the first version")
    by_version.plot([r["version"] for r in points], [r[metric] for r in points])
    by_version.set_xlabel("model version")
    by_time.set_ylabel(metric)
    fig.suptitle(f"global model {metric}")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return metric


@model_app.command("history")
@with_settings(BrokerSettings)
def history_command(
    out_dir: Path = typer.Option(
        None, "--out-dir", help="Read the aggregator's history.jsonl here instead of the broker."
    ),
    plot_to: Path = typer.Option(None, "--plot", help="Write a PNG plot here."),
    fleet: str = FLEET,
    json: bool = JSON,
    timeout: float = TIMEOUT,
    password: str = PASSWORD,
    settings: Any = None,
) -> None:
    """The accuracy (or loss) of each version: the aggregator's retained summary of its last
    500 versions, read over MQTT, or with --out-dir its whole history.jsonl.

    Example: `fedmq model history --broker mqtt://127.0.0.1:1883 --plot history.png`
    """
    if out_dir is not None:
        rows = load_history(out_dir)
    else:
        rows = retained_history(settings, password, fleet, timeout)
    if plot_to is not None:
        metric = plot(rows, plot_to)
        if not json:
            typer.echo(f"plotted {metric} of {len(rows)} versions to {plot_to}")
    if json:
        print_json(rows)
    elif plot_to is None:
        for r in rows:
            typer.echo(f"v{r['version']:<6} accuracy={r.get('accuracy')} loss={r.get('loss')}")


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
