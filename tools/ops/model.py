"""The retained global model, for an operator: summary, export, predictions on raw rows."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from fedmq.data import Dataset
from fedmq.errors import DataError, ModelError
from fedmq.files import atomic_write
from fedmq.wire import AggregatorStatus, GlobalModel
from tools.ops.jsonify import plain

FORMATS = ("onnx", "npz")


def summary(model: GlobalModel, status: AggregatorStatus | None) -> dict[str, Any]:
    """What ``fedmq model show`` prints: identity, architecture, preprocessing, evaluation."""
    arch = model.arch.to_dict()
    return {
        "run": model.run,
        "version": model.version,
        "arch": arch,
        "params": sum(w.size for w in model.weights.values()),
        "digest": model.digest,
        "created_at": model.created_at,
        "preprocess": preprocess(model),
        "hyper": plain(model.hyper),
        "evaluation": None
        if status is None
        else {
            "version": status.version,
            "accuracy": status.last_accuracy,
            "loss": status.last_loss,
        },
        "epsilon": fleet_epsilon(status),
    }


def preprocess(model: GlobalModel) -> dict[str, Any] | None:
    """The standardization inside the model, per feature (by name when the model carries
    its schema): ``{"standardize": {name: {"mean": m, "scale": s}}}``; None without one."""
    if model.prep is None:
        return None
    schema = model.arch.schema
    width = model.prep.mean.size
    names = schema.features if schema is not None else [f"x{i}" for i in range(width)]
    per_feature = {
        name: {"mean": float(m), "scale": float(s)}
        for name, m, s in zip(names, model.prep.mean, model.prep.scale, strict=True)
    }
    return {"standardize": per_feature}


def fleet_epsilon(status: AggregatorStatus | None) -> float | None:
    """The fleet's ε spent, when DP accounting is on; None without DP (or no status)."""
    return None if status is None else status.epsilon


def onnx_version(onnx_bytes: bytes) -> int | None:
    """The ``model_version`` an ONNX export carries in its metadata (None if absent)."""
    import onnx

    try:
        proto = onnx.load_from_string(onnx_bytes)
    except Exception as exc:  # onnx raises DecodeError and others, no common base
        raise ModelError("bad_onnx", f"the retained ONNX model cannot be read: {exc}") from exc
    props = {p.key: p.value for p in proto.metadata_props}
    value = props.get("model_version")
    return int(value) if value is not None and value.isdigit() else None


def export(model: GlobalModel, onnx_bytes: bytes | None, fmt: str, out: Path) -> Path:
    """Write the model as ONNX (the aggregator's own export) or NPZ (weights + arch)."""
    if fmt not in FORMATS:
        raise ModelError("bad_format", f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt == "onnx":
        if not onnx_bytes:
            raise ModelError("no_onnx", "the broker retains no ONNX model for this fleet")
        found = onnx_version(onnx_bytes)
        if found is not None and found != model.version:
            raise ModelError(
                "onnx_behind",
                f"the retained ONNX model is v{found} but the global model is v{model.version};"
                " try again in a moment",
            )
        data = onnx_bytes
    else:
        buf = io.BytesIO()
        meta = {"version": model.version, "arch": model.arch.to_dict()}
        prep = (
            {}
            if model.prep is None
            else {"prep_mean": model.prep.mean, "prep_scale": model.prep.scale}
        )  # fmt: skip  (the model takes (x - prep_mean) / prep_scale)
        np.savez(buf, __fedmq__=np.array(json.dumps(meta)), **model.weights, **prep)
        data = buf.getvalue()
    atomic_write(out, data)
    return out


def predict(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """The model's outputs on raw rows, by onnxruntime (probabilities, or regression values)."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    wanted = session.get_inputs()[0]
    width = wanted.shape[1] if isinstance(wanted.shape[1], int) else None
    if width is not None and x.shape[1] != width:
        raise DataError(
            "bad_features", f"the data has {x.shape[1]} features, the model takes {width}"
        )
    names = [o.name for o in session.get_outputs()]
    out = "probabilities" if "probabilities" in names else names[0]
    return session.run([out], {wanted.name: x.astype(np.float32)})[0]


def score(model: GlobalModel, outputs: np.ndarray, data: Dataset) -> dict[str, float]:
    """Accuracy (classifier) or MSE (regression) of ``outputs`` against ``data.y``."""
    if model.arch.is_classifier:
        return {"accuracy": float(np.mean(np.argmax(outputs, axis=1) == data.y))}
    y = np.asarray(data.y, dtype=np.float64).reshape(len(data.y), -1)
    return {"mse": float(np.mean((outputs.astype(np.float64) - y) ** 2))}
