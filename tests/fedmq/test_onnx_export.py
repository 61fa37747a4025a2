"""fedmq.onnx_export: onnxruntime agrees with the NumPy model; metadata; atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmq import model
from fedmq._version import __version__
from fedmq.errors import ModelError
from fedmq.model import Arch, init_weights
from fedmq.onnx_export import IR_VERSION, OPSET, to_onnx, write_onnx
from fedmq.preprocess import Moments, Standardizer
from fedmq.training import Hyper
from fedmq.wire import GlobalModel, weights_digest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOL = 1e-5
N_INPUTS = 1000

PARITY_ARCHS = {
    "mlp-64-32-10-relu": Arch("mlp", (64, 32, 10), "relu"),
    "mlp-tanh-3-hidden": Arch("mlp", (20, 16, 12, 8, 5), "tanh"),
    "linear-1-1": Arch("linear", (1, 1)),
}


def _session(data: bytes):
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _weights(arch: Arch, seed: int) -> dict[str, np.ndarray]:
    w = init_weights(arch, seed=seed)
    rng = np.random.default_rng(seed + 1000)
    for name in w:  # non-zero biases, so a dropped Add would show
        if name.startswith("b"):
            w[name] = (rng.standard_normal(w[name].shape) * 0.1).astype(np.float32)
    return w


def _max_diffs(arch: Arch, weights, x: np.ndarray, prep=None) -> dict[str, float]:
    """Run the exported model on ``x``; max abs difference of each output vs NumPy.

    With ``prep``, ``x`` is raw: the export standardizes it, NumPy gets ``prep.apply(x)``.
    """
    sess = _session(to_onnx(arch, weights, model_version=1, prep=prep))
    outputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x}), strict=True))
    if prep is not None:
        x = prep.apply(x)
    ref = model.forward(arch, weights, x)
    if arch.is_classifier:
        assert set(outputs) == {"logits", "probabilities"}
        assert outputs["logits"].shape == outputs["probabilities"].shape == ref.shape
        # Labels agree wherever the top two logits are not a near tie.
        top2 = np.sort(ref, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 1e-4
        labels = outputs["logits"].argmax(axis=1)
        np.testing.assert_array_equal(labels[clear], model.predict(arch, weights, x)[clear])
        return {
            "logits": float(np.abs(outputs["logits"] - ref).max()),
            "probabilities": float(np.abs(outputs["probabilities"] - model.softmax(ref)).max()),
        }
    assert set(outputs) == {"y"}
    assert outputs["y"].shape == ref.shape
    diffs = {"y": float(np.abs(outputs["y"] - ref).max())}
    if arch.n_outputs == 1:
        pred = model.predict(arch, weights, x)
        diffs["predict"] = float(np.abs(outputs["y"][:, 0] - pred).max())
    return diffs


@pytest.mark.parametrize("key", list(PARITY_ARCHS))
def test_onnxruntime_matches_numpy(key):
    arch = PARITY_ARCHS[key]
    weights = _weights(arch, seed=3)
    x = np.random.default_rng(4).standard_normal((N_INPUTS, arch.n_inputs)).astype(np.float32)
    diffs = _max_diffs(arch, weights, x)
    print(f"{key}: max abs diff {diffs}")
    assert diffs
    for name, diff in diffs.items():
        assert diff <= TOL, f"{name}: max abs diff {diff:.3g} > {TOL}"


@pytest.mark.parametrize("key", list(PARITY_ARCHS))
def test_onnxruntime_on_raw_rows_matches_numpy_through_the_prep(key):
    """Raw sensor-like rows (scales 1e-3..1e4, offsets) go straight into onnxruntime."""
    arch = PARITY_ARCHS[key]
    rng = np.random.default_rng(5)
    scales = np.logspace(-3, 4, arch.n_inputs)
    offsets = rng.uniform(-5, 5, arch.n_inputs) * scales
    raw = (rng.standard_normal((N_INPUTS, arch.n_inputs)) * scales + offsets).astype(np.float32)
    prep = Standardizer.from_moments(Moments.of(raw))
    diffs = _max_diffs(arch, _weights(arch, seed=3), raw, prep)
    for name, diff in diffs.items():
        assert diff <= TOL, f"{name}: max abs diff {diff:.3g} > {TOL}"
    # Without the prep in the graph the same raw rows give something else entirely.
    assert np.abs(model.forward(arch, _weights(arch, 3), raw) - model.forward(
        arch, _weights(arch, 3), prep.apply(raw))).max() > 1.0  # fmt: skip


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(["mlp", "linear"]),
    activation=st.sampled_from(["relu", "tanh"]),
    widths=st.lists(st.integers(1, 24), min_size=2, max_size=5),
    batch=st.integers(1, 64),
    seed=st.integers(0, 2**16),
)
def test_onnx_parity_random_archs(kind, activation, widths, batch, seed):
    if kind == "linear":
        widths = widths[:2]
    else:
        widths[-1] = max(widths[-1], 2)
    arch = Arch(kind, tuple(widths), activation)
    weights = _weights(arch, seed)
    x = np.random.default_rng(seed).standard_normal((batch, arch.n_inputs)).astype(np.float32)
    for name, diff in _max_diffs(arch, weights, x).items():
        assert diff <= TOL, f"{arch} {name}: max abs diff {diff:.3g}"


def _graph_info(m):
    def dims(value_info):
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    return (
        {i.name: dims(i) for i in m.graph.input},
        {o.name: dims(o) for o in m.graph.output},
    )


def test_model_structure_and_checker():
    arch = PARITY_ARCHS["mlp-64-32-10-relu"]
    data = to_onnx(arch, _weights(arch, 0), model_version=7)
    m = onnx.load_from_string(data)
    onnx.checker.check_model(m, full_check=True)
    assert m.ir_version == IR_VERSION == 8
    assert [(o.domain, o.version) for o in m.opset_import] == [("", OPSET)]
    assert OPSET == 17
    assert m.producer_name == "fedmq"
    inputs, outputs = _graph_info(m)
    assert inputs == {"x": ["N", 64]}
    assert outputs == {"logits": ["N", 10], "probabilities": ["N", 10]}
    init = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    assert sorted(init) == sorted(arch.param_shapes())
    assert all(a.dtype == np.float32 for a in init.values())
    softmax = [n for n in m.graph.node if n.op_type == "Softmax"]
    assert len(softmax) == 1
    assert onnx.helper.get_attribute_value(softmax[0].attribute[0]) == -1

    linear = onnx.load_from_string(
        to_onnx(Arch("linear", (3, 2)), _weights(Arch("linear", (3, 2)), 0), model_version=1)
    )
    assert _graph_info(linear) == ({"x": ["N", 3]}, {"y": ["N", 2]})
    assert not [n for n in linear.graph.node if n.op_type in ("Relu", "Tanh", "Softmax")]


def _metadata(data: bytes) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load_from_string(data).metadata_props}


def test_metadata():
    arch = PARITY_ARCHS["mlp-tanh-3-hidden"]
    weights = _weights(arch, 5)
    meta = _metadata(to_onnx(arch, weights, model_version=42))
    assert set(meta) == {"fedmq_version", "model_version", "digest", "arch"}
    assert meta["fedmq_version"] == __version__
    assert meta["model_version"] == "42"
    assert Arch(**json.loads(meta["arch"])) == arch
    assert json.loads(meta["arch"]) == arch.to_dict()
    # The very digest a GlobalModel of these weights carries on the wire.
    model = GlobalModel.build(42, arch, weights, Hyper(), run="0" * 16)
    assert meta["digest"] == model.digest

    # A given digest is recorded as is.
    given = "ab" * 32
    assert _metadata(to_onnx(arch, weights, model_version=1, digest=given))["digest"] == given


def test_digest_is_canonical_and_matches_wire():
    arch = PARITY_ARCHS["mlp-64-32-10-relu"]
    weights = _weights(arch, 6)
    shuffled = {k: weights[k] for k in reversed(list(weights))}  # mapping order is irrelevant
    float64 = {k: v.astype(np.float64) for k, v in weights.items()}  # exported as float32
    digests = {
        _metadata(to_onnx(arch, w, model_version=1))["digest"] for w in (weights, shuffled, float64)
    }
    assert digests == {weights_digest(arch, weights)}
    changed = dict(weights, b1=weights["b1"] + np.float32(1))
    assert _metadata(to_onnx(arch, changed, model_version=1))["digest"] not in digests
    # The digest covers the arch too: same weights, another activation.
    tanh = Arch(arch.kind, arch.layers, "tanh")
    assert _metadata(to_onnx(tanh, weights, model_version=1))["digest"] not in digests


def _wrong_shape(arch, w):
    w["w0"] = w["w0"].T.copy()


def _missing(arch, w):
    del w[f"b{len(arch.layers) - 2}"]


def _extra(arch, w):
    w["w99"] = np.zeros((1, 1), np.float32)


def _int(arch, w):
    w["w0"] = w["w0"].astype(np.int64)


@pytest.mark.parametrize("corrupt", [_wrong_shape, _missing, _extra, _int])
def test_mismatched_weights_raise(corrupt):
    arch = Arch("mlp", (4, 3, 2))
    weights = _weights(arch, 0)
    corrupt(arch, weights)
    with pytest.raises(ModelError) as info:
        to_onnx(arch, weights, model_version=1)
    assert info.value.reason == "bad_weights"


def test_weights_for_another_arch_raise():
    with pytest.raises(ModelError) as info:
        to_onnx(Arch("mlp", (4, 3, 2)), _weights(Arch("mlp", (4, 5, 2)), 0), model_version=1)
    assert info.value.reason == "bad_weights"


def test_missing_onnx_raises_model_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    arch = Arch("linear", (1, 1))
    with pytest.raises(ModelError) as info:
        to_onnx(arch, _weights(arch, 0), model_version=1)
    assert info.value.reason == "missing_dependency"
    assert "fedmq[aggregator]" in str(info.value)


def test_import_does_not_import_onnx():
    code = (
        "import sys, fedmq.onnx_export\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime'))\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# -- write_onnx ----------------------------------------------------------------------------


def test_write_onnx_creates_dirs_and_leaves_no_tmp(tmp_path):
    arch = Arch("linear", (1, 1))
    data = to_onnx(arch, _weights(arch, 0), model_version=1)
    target = tmp_path / "a" / "b" / "model.onnx"
    out = write_onnx(target, data)
    assert out == target
    assert target.read_bytes() == data
    assert os.listdir(target.parent) == ["model.onnx"]
    assert _session(target.read_bytes()).get_outputs()[0].name == "y"

    newer = to_onnx(arch, _weights(arch, 1), model_version=2)
    write_onnx(str(target), newer)  # replaces; str paths work too
    assert target.read_bytes() == newer
    assert os.listdir(target.parent) == ["model.onnx"]


def test_write_onnx_failure_keeps_old_file_and_cleans_tmp(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    write_onnx(target, b"old")

    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        write_onnx(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_metadata_names_the_features_classes_and_label_of_the_schema():
    from fedmq.schema import Schema

    schema = Schema(("temp_c", "lux"), "activity", "classification", ("idle", "run", "walk"))
    arch = Arch("mlp", (2, 4, 3), schema=schema)
    weights = init_weights(arch, 0)
    meta = _metadata(to_onnx(arch, weights, model_version=3))
    assert json.loads(meta["features"]) == ["temp_c", "lux"]
    assert json.loads(meta["classes"]) == ["idle", "run", "walk"] and meta["label"] == "activity"
    assert json.loads(meta["arch"])["schema"]["task"] == "classification"
    assert meta["digest"] == weights_digest(arch, weights)
    plain = _metadata(to_onnx(Arch("mlp", (2, 4, 3)), weights, model_version=3))
    assert "features" not in plain and plain["digest"] != meta["digest"]
