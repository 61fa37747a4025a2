"""Export a model (``fedmq.model.Arch`` + weights) as an ONNX graph.

``onnx`` is imported inside the functions only: importing this module must not pull it
in, since devices install ``fedmq[agent]`` without it. The server installs
``fedmq[aggregator]``, which brings ``onnx`` (and ``onnxruntime`` to check the export).

The graph takes ``x``: float32 ``[N, n_inputs]`` (``N`` symbolic). An MLP outputs
``logits`` and ``probabilities`` (softmax over the last axis); a linear model outputs
``y``. Hidden layers apply the arch's activation; the last layer is raw, exactly as
``fedmq.model.forward``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedmq._version import __version__
from fedmq.errors import ModelError
from fedmq.files import atomic_write
from fedmq.model import Arch, check_weights
from fedmq.preprocess import Standardizer
from fedmq.tensors import model_digest

if TYPE_CHECKING:  # pragma: no cover
    import onnx

OPSET = 17
IR_VERSION = 8  # set explicitly so that older onnxruntime releases can load the model

INPUT = "x"
BATCH_DIM = "N"


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise ModelError(
            "missing_dependency",
            "ONNX export needs the onnx package: install fedmq[aggregator]",
        ) from exc
    return onnx


def _build_graph(
    onnx: Any, arch: Arch, weights: Mapping[str, np.ndarray], prep: Standardizer | None
) -> onnx.GraphProto:
    helper, numpy_helper, tp = onnx.helper, onnx.numpy_helper, onnx.TensorProto
    tensors = {name: weights[name] for name in arch.param_shapes()}
    if prep is not None:
        tensors |= {"prep_mean": prep.mean, "prep_scale": prep.scale}
    initializers = [
        numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name)
        for name, arr in tensors.items()
    ]
    nodes = []
    h = INPUT
    if prep is not None:  # the model's own standardization: raw rows go straight in
        nodes.append(helper.make_node("Sub", [INPUT, "prep_mean"], ["x_centred"], name="Sub_prep"))
        nodes.append(
            helper.make_node("Div", ["x_centred", "prep_scale"], ["x_std"], name="Div_prep")
        )
        h = "x_std"
    n_layers = len(arch.layers) - 1
    hidden = n_layers - 1 if arch.kind == "mlp" else 0
    act_op = "Relu" if arch.activation == "relu" else "Tanh"
    last_out = "logits" if arch.is_classifier else "y"
    for i in range(n_layers):
        mm = f"matmul{i}"
        z = f"z{i}" if i < n_layers - 1 else last_out
        nodes.append(helper.make_node("MatMul", [h, f"w{i}"], [mm], name=f"MatMul_{i}"))
        nodes.append(helper.make_node("Add", [mm, f"b{i}"], [z], name=f"Add_{i}"))
        h = z
        if i < hidden:
            a = f"h{i}"
            nodes.append(helper.make_node(act_op, [z], [a], name=f"{act_op}_{i}"))
            h = a
    outputs = [helper.make_tensor_value_info(last_out, tp.FLOAT, [BATCH_DIM, arch.n_outputs])]
    if arch.is_classifier:
        nodes.append(
            helper.make_node("Softmax", ["logits"], ["probabilities"], name="Softmax", axis=-1)
        )
        outputs.append(
            helper.make_tensor_value_info("probabilities", tp.FLOAT, [BATCH_DIM, arch.n_outputs])
        )
    inputs = [helper.make_tensor_value_info(INPUT, tp.FLOAT, [BATCH_DIM, arch.n_inputs])]
    return helper.make_graph(nodes, f"fedmq_{arch.kind}", inputs, outputs, initializers)


def to_onnx(
    arch: Arch,
    weights: Mapping[str, np.ndarray],
    *,
    model_version: int,
    digest: str | None = None,
    prep: Standardizer | None = None,
) -> bytes:
    """Serialized ONNX model (opset ``OPSET``, IR ``IR_VERSION``) computing ``forward``.

    Metadata: ``fedmq_version``, ``model_version``, ``digest`` (the model digest of
    docs/wire.md 3.2 over the float32 weights; computed when not given) and ``arch``
    (JSON); with a schema in the arch also ``features``, ``classes`` (JSON arrays) and
    ``label``. With ``prep`` the graph first computes ``(x - mean) / scale``, so it takes
    raw feature rows, and the metadata adds ``prep`` (JSON mean and scale). Raises
    ModelError ``bad_weights`` when the weights do not fit ``arch``,
    ``missing_dependency`` when onnx is not installed.
    """
    check_weights(arch, weights)
    onnx = _import_onnx()
    if digest is None:
        f32 = {n: np.asarray(w, np.float32) for n, w in weights.items()}
        digest = model_digest(arch, f32, prep)
    graph = _build_graph(onnx, arch, weights, prep)
    props = {} if prep is None else {
        "prep": json.dumps({"mean": prep.mean.tolist(), "scale": prep.scale.tolist()})
    }  # fmt: skip
    model = onnx.helper.make_model(
        graph,
        producer_name="fedmq",
        producer_version=__version__,
        opset_imports=[onnx.helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    onnx.helper.set_model_props(
        model,
        {
            "fedmq_version": __version__,
            "model_version": str(int(model_version)),
            "digest": digest,
            "arch": json.dumps(arch.to_dict()),
            **_schema_props(arch),
            **props,
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _schema_props(arch: Arch) -> dict[str, str]:
    """The names a runtime needs to feed raw rows and read classes (also inside ``arch``)."""
    if arch.schema is None:
        return {}
    props = {"features": json.dumps(list(arch.schema.features)), "label": arch.schema.label}
    if arch.schema.classes is not None:
        props["classes"] = json.dumps(list(arch.schema.classes))
    return props


def write_onnx(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`fedmq.files.atomic_write`),
    creating its directory; readable by all (0644): the export is published."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, data)
