"""The NumPy models: an MLP (softmax cross-entropy) and linear regression (MSE).

Weights are an ordered ``name -> float32 array`` mapping: ``w0, b0, w1, b1, ...``
where ``w{i}`` has shape ``(layers[i], layers[i+1])`` and ``b{i}`` ``(layers[i+1],)``.
Linear regression is the one-layer case without an activation, scored with MSE.
Each layer's forward and its gradient sit side by side so they can be checked
against each other (see the finite-difference test).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedmq.errors import ModelError
from fedmq.schema import Schema

Weights = dict[str, np.ndarray]

KINDS = ("mlp", "linear")
ACTIVATIONS = ("relu", "tanh")
MAX_LAYERS = 16
MAX_WIDTH = 65_536


@dataclass(frozen=True)
class Arch:
    """An architecture; invalid ones cannot be constructed."""

    kind: str
    layers: tuple[int, ...]
    activation: str = "relu"
    # The fleet's data schema (feature names, label column, task, class names), when the
    # aggregator was given one; None keeps the column-position behaviour of plain arrays.
    schema: Schema | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.kind not in KINDS:
            raise ModelError("bad_arch", f"model kind must be one of {KINDS}, got {self.kind!r}")
        if self.activation not in ACTIVATIONS:
            raise ModelError(
                "bad_arch", f"activation must be one of {ACTIVATIONS}, got {self.activation!r}"
            )
        if not 2 <= len(self.layers) <= MAX_LAYERS:
            raise ModelError("bad_arch", f"need 2..{MAX_LAYERS} layer widths, got {self.layers}")
        if any(
            isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= MAX_WIDTH
            for w in self.layers
        ):
            raise ModelError("bad_arch", f"layer widths must be ints in 1..{MAX_WIDTH}")
        if self.kind == "linear" and len(self.layers) != 2:
            raise ModelError("bad_arch", "a linear model has exactly two widths: [inputs, outputs]")
        if self.kind == "mlp" and self.layers[-1] < 2:
            raise ModelError("bad_arch", "an MLP classifier needs at least 2 output classes")
        if self.schema is not None:
            check_arch_schema(self.kind, self.layers, self.schema)

    @property
    def n_inputs(self) -> int:
        return self.layers[0]

    @property
    def n_outputs(self) -> int:
        return self.layers[-1]

    @property
    def is_classifier(self) -> bool:
        return self.kind == "mlp"

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter names in canonical order, with their shapes."""
        shapes: dict[str, tuple[int, ...]] = {}
        for i, (fan_in, fan_out) in enumerate(zip(self.layers, self.layers[1:], strict=False)):
            shapes[f"w{i}"] = (fan_in, fan_out)
            shapes[f"b{i}"] = (fan_out,)
        return shapes

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "layers": list(self.layers), "activation": self.activation}
        if self.schema is not None:  # absent, not null: a model without one encodes as before
            out["schema"] = schema_to_wire(self.schema)
        return out


def schema_to_wire(schema: Schema) -> dict:
    """The ``arch.schema`` map of docs/wire.md (the schema file's keys minus its version)."""
    return {k: v for k, v in schema.to_dict().items() if k != "version"}


def check_arch_schema(kind: str, layers: tuple[int, ...], schema: Schema) -> None:
    """ModelError ``schema_mismatch`` unless the widths and kind are the schema's."""
    want_kind = "mlp" if schema.task == "classification" else "linear"
    problems = []
    if kind != want_kind:
        problems.append(f"a {schema.task} schema needs a {want_kind} model, not {kind}")
    if layers[0] != schema.n_features:
        problems.append(f"{layers[0]} inputs, the schema has {schema.n_features} features")
    if layers[-1] != schema.n_outputs:
        what = "classes" if schema.classes is not None else "outputs"
        problems.append(f"{layers[-1]} outputs, the schema has {schema.n_outputs} {what}")
    if problems:
        raise ModelError(
            "schema_mismatch", "the model does not match the schema: " + "; ".join(problems)
        )


def init_weights(arch: Arch, seed: int = 0) -> Weights:
    """Seeded init: He for ReLU, Glorot for tanh and linear; biases zero."""
    rng = np.random.default_rng(seed)
    weights: Weights = {}
    for name, shape in arch.param_shapes().items():
        if name.startswith("b"):
            weights[name] = np.zeros(shape, dtype=np.float32)
            continue
        fan_in, fan_out = shape
        if arch.kind == "mlp" and arch.activation == "relu":
            std = np.sqrt(2.0 / fan_in)
        else:
            std = np.sqrt(2.0 / (fan_in + fan_out))
        weights[name] = (rng.standard_normal(shape) * std).astype(np.float32)
    return weights


def check_weights(arch: Arch, weights: Mapping[str, np.ndarray]) -> None:
    """Raise ModelError unless ``weights`` has exactly the arch's names and shapes,
    each a floating-point tensor."""
    shapes = arch.param_shapes()
    if set(weights) != set(shapes):
        raise ModelError("bad_weights", f"expected tensors {sorted(shapes)}, got {sorted(weights)}")
    for name, shape in shapes.items():
        got = tuple(np.shape(weights[name]))
        if got != shape:
            raise ModelError("bad_weights", f"tensor {name} has shape {got}, expected {shape}")
        dtype = np.asarray(weights[name]).dtype
        if not np.issubdtype(dtype, np.floating):
            raise ModelError("bad_weights", f"tensor {name} has dtype {dtype}, expected float")


def _activate(arch: Arch, z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0) if arch.activation == "relu" else np.tanh(z)


def _activate_grad(arch: Arch, z: np.ndarray, a: np.ndarray) -> np.ndarray:
    # d act / dz, from the pre-activation z (relu) or the output a (tanh).
    return (z > 0).astype(z.dtype) if arch.activation == "relu" else 1.0 - a * a


def _hidden_count(arch: Arch) -> int:
    return len(arch.layers) - 2 if arch.kind == "mlp" else 0


def forward(arch: Arch, weights: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Logits (MLP) or predictions (linear), shape ``(n, outputs)``."""
    h = np.asarray(x, dtype=np.float32)
    hidden = _hidden_count(arch)
    for i in range(len(arch.layers) - 1):
        h = h @ weights[f"w{i}"] + weights[f"b{i}"]
        if i < hidden:
            h = _activate(arch, h)
    return h


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict(arch: Arch, weights: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Class labels (MLP) or predicted values (linear, shape ``(n,)`` for one output)."""
    out = forward(arch, weights, x)
    if arch.is_classifier:
        return out.argmax(axis=1)
    return out[:, 0] if arch.n_outputs == 1 else out


def _targets(arch: Arch, y: np.ndarray) -> np.ndarray:
    if arch.is_classifier:
        return np.asarray(y, dtype=np.int64)
    y = np.asarray(y, dtype=np.float32)
    return y.reshape(-1, 1) if y.ndim == 1 else y


def loss_and_grads(
    arch: Arch, weights: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray
) -> tuple[float, Weights]:
    """Mean loss over the batch and its gradient for every parameter."""
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    hidden = _hidden_count(arch)
    # Forward, keeping each layer's input and pre-activation for the backward pass.
    inputs, pre = [], []
    h = x
    for i in range(len(arch.layers) - 1):
        inputs.append(h)
        z = h @ weights[f"w{i}"] + weights[f"b{i}"]
        pre.append(z)
        h = _activate(arch, z) if i < hidden else z
    t = _targets(arch, y)
    if arch.is_classifier:
        p = softmax(h)
        loss = float(-np.log(np.clip(p[np.arange(n), t], 1e-12, None)).mean())
        g = p
        g[np.arange(n), t] -= 1.0
        g /= n
    else:
        err = h - t
        loss = float((err * err).mean())
        g = 2.0 * err / err.size
    grads: Weights = {}
    for i in reversed(range(len(arch.layers) - 1)):
        grads[f"w{i}"] = (inputs[i].T @ g).astype(np.float32)
        grads[f"b{i}"] = g.sum(axis=0).astype(np.float32)
        if i > 0:
            g = g @ weights[f"w{i}"].T
            g = g * _activate_grad(arch, pre[i - 1], inputs[i])
    return loss, {name: grads[name] for name in arch.param_shapes()}


def loss(arch: Arch, weights: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    out = forward(arch, weights, x)
    t = _targets(arch, y)
    if arch.is_classifier:
        p = softmax(out)
        return float(-np.log(np.clip(p[np.arange(len(t)), t], 1e-12, None)).mean())
    return float(((out - t) ** 2).mean())


def accuracy(arch: Arch, weights: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(arch, weights, x) == np.asarray(y)).mean())


def copy_weights(weights: Mapping[str, np.ndarray]) -> Weights:
    return {k: np.array(v, dtype=np.float32, copy=True) for k, v in weights.items()}


def add(
    weights: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray], scale: float = 1.0
) -> Weights:
    """``weights + scale * delta`` as a new mapping, float32."""
    return {k: (weights[k] + np.float32(scale) * delta[k]).astype(np.float32) for k in weights}


def subtract(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> Weights:
    return {k: (a[k] - b[k]).astype(np.float32) for k in a}


def global_norm(tensors: Mapping[str, np.ndarray]) -> float:
    return float(
        np.sqrt(sum(float(np.sum(np.square(t, dtype=np.float64))) for t in tensors.values()))
    )
