"""fedmq.model: gradients against finite differences, seeded init, validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmq import model
from fedmq.errors import ModelError
from fedmq.model import Arch, check_weights, init_weights, loss_and_grads

GRAD_ARCHS = {
    "mlp-relu": Arch("mlp", (5, 7, 4), "relu"),
    "mlp-tanh": Arch("mlp", (4, 6, 5, 3), "tanh"),
    "linear": Arch("linear", (3, 1)),
    "linear-multi": Arch("linear", (3, 2)),
}


def _data(arch: Arch, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, arch.n_inputs)).astype(np.float32)
    if arch.is_classifier:
        y = rng.integers(0, arch.n_outputs, size=n)
    elif arch.n_outputs == 1:
        y = rng.standard_normal(n).astype(np.float32)
    else:
        y = rng.standard_normal((n, arch.n_outputs)).astype(np.float32)
    return x, y


def _as64(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float64) for k, v in weights.items()}


def _numeric_grads(arch, weights, x, y, eps=1e-6):
    """Central differences of ``model.loss`` in float64, one parameter entry at a time."""
    grads = {}
    for name, w in weights.items():
        g = np.zeros_like(w)
        for idx in np.ndindex(w.shape):
            orig = w[idx]
            w[idx] = orig + eps
            up = model.loss(arch, weights, x, y)
            w[idx] = orig - eps
            down = model.loss(arch, weights, x, y)
            w[idx] = orig
            g[idx] = (up - down) / (2 * eps)
        grads[name] = g
    return grads


@pytest.mark.parametrize("key", list(GRAD_ARCHS))
def test_gradients_match_finite_differences(key):
    arch = GRAD_ARCHS[key]
    x, y = _data(arch, 12, seed=1)
    weights = _as64(init_weights(arch, seed=2))
    # Non-zero biases, so their gradients flow through every path.
    rng = np.random.default_rng(3)
    for name in weights:
        if name.startswith("b"):
            weights[name] = rng.standard_normal(weights[name].shape) * 0.1

    loss, analytic = loss_and_grads(arch, weights, x, y)
    numeric = _numeric_grads(arch, weights, x, y)

    assert list(analytic) == list(arch.param_shapes())
    assert loss == pytest.approx(model.loss(arch, weights, x, y), rel=1e-6)
    for name, shape in arch.param_shapes().items():
        assert analytic[name].shape == shape
        assert analytic[name].dtype == np.float32
        # Analytic grads are computed in float64 here and rounded to float32 on return.
        np.testing.assert_allclose(analytic[name], numeric[name], rtol=1e-4, atol=1e-6)
    assert any(np.abs(g).max() > 1e-3 for g in analytic.values())


@pytest.mark.parametrize("key", list(GRAD_ARCHS))
def test_float32_gradients_close_to_float64(key):
    arch = GRAD_ARCHS[key]
    x, y = _data(arch, 32, seed=4)
    w32 = init_weights(arch, seed=5)
    loss32, g32 = loss_and_grads(arch, w32, x, y)
    loss64, g64 = loss_and_grads(arch, _as64(w32), x, y)
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    for name in g32:
        scale = max(float(np.abs(g64[name]).max()), 1e-3)
        assert float(np.abs(g32[name] - g64[name]).max()) <= 1e-4 * scale


def test_loss_and_grads_does_not_mutate_inputs():
    arch = GRAD_ARCHS["mlp-relu"]
    x, y = _data(arch, 10, seed=6)
    weights = init_weights(arch, seed=7)
    before = model.copy_weights(weights)
    x_before, y_before = x.copy(), y.copy()
    loss_and_grads(arch, weights, x, y)
    for name in weights:
        np.testing.assert_array_equal(weights[name], before[name])
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)


def test_cross_entropy_of_uniform_logits_is_log_classes():
    arch = Arch("mlp", (3, 4, 5))
    weights = {k: np.zeros(s, dtype=np.float32) for k, s in arch.param_shapes().items()}
    x, y = _data(arch, 8, seed=8)
    loss, grads = loss_and_grads(arch, weights, x, y)
    assert loss == pytest.approx(np.log(5), rel=1e-6)
    # Zero weights: the output bias gradient is mean(p - onehot) = 1/5 - class frequency.
    freq = np.bincount(y, minlength=5) / len(y)
    np.testing.assert_allclose(grads["b1"], 1 / 5 - freq, atol=1e-6)


# -- init ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(GRAD_ARCHS.values()), ids=list(GRAD_ARCHS))
def test_init_is_deterministic_by_seed(arch):
    a, b, c = init_weights(arch, seed=11), init_weights(arch, seed=11), init_weights(arch, 12)
    assert list(a) == list(arch.param_shapes())
    for name, shape in arch.param_shapes().items():
        assert a[name].shape == shape
        assert a[name].dtype == np.float32
        np.testing.assert_array_equal(a[name], b[name])
        if name.startswith("b"):
            assert not a[name].any()
        else:
            assert not np.array_equal(a[name], c[name])


@pytest.mark.parametrize(
    ("arch", "expected_std"),
    [
        (Arch("mlp", (400, 300, 2), "relu"), np.sqrt(2 / 400)),  # He
        (Arch("mlp", (400, 300, 2), "tanh"), np.sqrt(2 / 700)),  # Glorot
        (Arch("linear", (400, 300)), np.sqrt(2 / 700)),  # Glorot
    ],
)
def test_init_scale(arch, expected_std):
    w0 = init_weights(arch, seed=0)["w0"]
    assert abs(float(w0.mean())) < 0.02 * expected_std
    assert float(w0.std()) == pytest.approx(expected_std, rel=0.02)


# -- Arch validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "layers", "activation"),
    [
        ("cnn", (2, 2), "relu"),
        ("mlp", (4, 3), "sigmoid"),
        ("mlp", (4,), "relu"),
        ("mlp", (), "relu"),
        ("mlp", (2,) * (model.MAX_LAYERS + 1), "relu"),
        ("mlp", (4, 0, 2), "relu"),
        ("mlp", (4, -1, 2), "relu"),
        ("mlp", (4, model.MAX_WIDTH + 1, 2), "relu"),
        ("mlp", (4, 3.0, 2), "relu"),
        ("mlp", (4, True, 2), "relu"),
        ("mlp", (4, "3", 2), "relu"),
        ("mlp", (4, 1), "relu"),
        ("linear", (4, 3, 1), "relu"),
    ],
)
def test_invalid_arch_raises_model_error(kind, layers, activation):
    with pytest.raises(ModelError) as info:
        Arch(kind, layers, activation)
    assert info.value.reason == "bad_arch"


def test_arch_shapes_and_dict():
    arch = Arch("mlp", [4, 8, 3], "tanh")
    assert arch.layers == (4, 8, 3)
    assert (arch.n_inputs, arch.n_outputs, arch.is_classifier) == (4, 3, True)
    assert list(arch.param_shapes().items()) == [
        ("w0", (4, 8)),
        ("b0", (8,)),
        ("w1", (8, 3)),
        ("b1", (3,)),
    ]
    assert Arch(**arch.to_dict()) == arch
    assert Arch("linear", (1, 1)).param_shapes() == {"w0": (1, 1), "b0": (1,)}


# -- check_weights -------------------------------------------------------------------------

ARCH = Arch("mlp", (4, 8, 3))


def _good() -> dict[str, np.ndarray]:
    return init_weights(ARCH, seed=0)


def test_check_weights_accepts_matching_weights():
    check_weights(ARCH, _good())
    check_weights(ARCH, _as64(_good()))  # any float dtype: callers cast to float32


def _missing(w):
    del w["b1"]


def _extra(w):
    w["w2"] = np.zeros((3, 3), np.float32)


def _renamed(w):
    w["W0"] = w.pop("w0")


def _transposed(w):
    w["w0"] = w["w0"].T


def _bias_2d(w):
    w["b0"] = w["b0"].reshape(1, -1)


def _scalar(w):
    w["b1"] = np.float32(0.0)


def _int_dtype(w):
    w["w1"] = w["w1"].astype(np.int32)


def _bool_dtype(w):
    w["b0"] = w["b0"].astype(bool)


def _object_dtype(w):
    w["b1"] = np.array([None, None, None], dtype=object)


def _complex_dtype(w):
    w["w0"] = w["w0"].astype(np.complex64)


@pytest.mark.parametrize(
    "corrupt",
    [
        _missing,
        _extra,
        _renamed,
        _transposed,
        _bias_2d,
        _scalar,
        _int_dtype,
        _bool_dtype,
        _object_dtype,
        _complex_dtype,
    ],
)
def test_check_weights_rejects(corrupt):
    weights = _good()
    corrupt(weights)
    with pytest.raises(ModelError) as info:
        check_weights(ARCH, weights)
    assert info.value.reason == "bad_weights"


# -- forward / softmax / predict -----------------------------------------------------------


def test_softmax_is_stable_and_normalized():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    p = model.softmax(logits)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(p[1], [1 / 3] * 3, rtol=1e-6)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(-50, 50, width=32), min_size=2, max_size=6), min_size=1, max_size=5
    ).filter(lambda rows: len({len(r) for r in rows}) == 1),
    st.floats(-100, 100, width=32),
)
def test_softmax_invariant_to_shift(rows, shift):
    logits = np.array(rows, dtype=np.float32)
    np.testing.assert_allclose(
        model.softmax(logits), model.softmax(logits + np.float32(shift)), atol=1e-5
    )


def test_forward_and_predict_shapes():
    clf = Arch("mlp", (4, 5, 3))
    x = np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32)
    w = init_weights(clf, seed=1)
    assert model.forward(clf, w, x).shape == (7, 3)
    np.testing.assert_array_equal(model.predict(clf, w, x), model.forward(clf, w, x).argmax(1))
    reg = Arch("linear", (4, 1))
    wr = init_weights(reg, seed=1)
    assert model.predict(reg, wr, x).shape == (7,)
    np.testing.assert_allclose(model.predict(reg, wr, x), (x @ wr["w0"] + wr["b0"])[:, 0])


def test_weight_arithmetic():
    a = init_weights(ARCH, seed=1)
    b = init_weights(ARCH, seed=2)
    d = model.subtract(a, b)
    back = model.add(b, d)
    for name in a:
        np.testing.assert_allclose(back[name], a[name], atol=1e-6)
        assert back[name].dtype == np.float32
    flat = np.concatenate([v.ravel().astype(np.float64) for v in d.values()])
    assert model.global_norm(d) == pytest.approx(float(np.linalg.norm(flat)), rel=1e-12)
