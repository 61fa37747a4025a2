"""fedmq.training: local SGD, delta semantics, clipping, FedProx, determinism, stats."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmq import model
from fedmq.errors import ModelError
from fedmq.model import Arch, global_norm, init_weights
from fedmq.training import Hyper, TrainingStopped, clip_delta, train_local

CLF = Arch("mlp", (2, 8, 2), "relu")


def _blobs(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two well-separated Gaussian blobs: linearly separable."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    centers = np.array([[-2.0, -2.0], [2.0, 2.0]])
    x = (centers[y] + rng.standard_normal((n, 2)) * 0.5).astype(np.float32)
    return x, y


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_training_reduces_loss_on_separable_data():
    x, y = _blobs()
    base = init_weights(CLF, seed=1)
    before = model.loss(CLF, base, x, y)
    delta, stats = train_local(CLF, base, x, y, Hyper(lr=0.1, epochs=10, batch=16), _rng())
    local = model.add(base, delta)
    after = model.loss(CLF, local, x, y)
    assert after < 0.2 * before
    assert after < 0.05
    assert model.accuracy(CLF, local, x, y) >= 0.99
    # The reported loss is the running mean over the last epoch: near the final loss.
    assert stats.loss < 0.1
    assert math.isfinite(stats.loss)


def test_linear_regression_recovers_line():
    # The seed's worked example: y = 3x + 2 with noise.
    arch = Arch("linear", (1, 1))
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(256, 1)).astype(np.float32)
    y = (3 * x[:, 0] + 2 + rng.normal(0, 0.05, 256)).astype(np.float32)
    base = init_weights(arch, seed=0)
    delta, _ = train_local(arch, base, x, y, Hyper(lr=0.1, epochs=50, batch=16), _rng())
    local = model.add(base, delta)
    assert float(local["w0"][0, 0]) == pytest.approx(3.0, abs=0.05)
    assert float(local["b0"][0]) == pytest.approx(2.0, abs=0.05)


def test_delta_is_local_minus_base_and_base_untouched():
    x, y = _blobs(n=40)
    base = init_weights(CLF, seed=2)
    saved = model.copy_weights(base)
    hyper = Hyper(lr=0.5, epochs=1, batch=len(x))  # one full-batch step
    delta, stats = train_local(CLF, base, x, y, hyper, _rng())

    for name in base:
        np.testing.assert_array_equal(base[name], saved[name])
    assert list(delta) == list(CLF.param_shapes())
    assert all(delta[k].dtype == np.float32 for k in delta)
    # One SGD step from base: local = base - lr * grad, so delta = -lr * grad(base).
    _, grads = model.loss_and_grads(CLF, base, x, y)
    for name in base:
        np.testing.assert_allclose(delta[name], -0.5 * grads[name], rtol=1e-5, atol=1e-7)
    assert stats.steps == 1
    assert global_norm(delta) > 0


def test_delta_matches_manual_sgd_over_minibatches():
    x, y = _blobs(n=50, seed=3)
    base = init_weights(CLF, seed=3)
    hyper = Hyper(lr=0.05, epochs=2, batch=16)
    delta, _ = train_local(CLF, base, x, y, hyper, _rng(7))

    # The same walk by hand, with the same permutations.
    rng = _rng(7)
    w = model.copy_weights(base)
    for _ in range(hyper.epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), hyper.batch):
            idx = order[start : start + hyper.batch]
            _, g = model.loss_and_grads(CLF, w, x[idx], y[idx])
            w = {k: w[k] - np.float32(hyper.lr) * g[k] for k in w}
    for name in base:
        np.testing.assert_allclose(delta[name], w[name] - base[name], atol=1e-6)


def test_clipping_bounds_delta_norm():
    x, y = _blobs(n=64)
    base = init_weights(CLF, seed=4)
    free, free_stats = train_local(CLF, base, x, y, Hyper(lr=0.5, epochs=3), _rng(1))
    clip = 0.1 * global_norm(free)
    clipped, stats = train_local(CLF, base, x, y, Hyper(lr=0.5, epochs=3, dp_clip=clip), _rng(1))

    assert not free_stats.clipped
    assert stats.clipped
    assert global_norm(clipped) <= clip * (1 + 1e-6)
    assert global_norm(clipped) == pytest.approx(clip, rel=1e-5)
    # Clipping scales, it does not change direction.
    for name in free:
        np.testing.assert_allclose(clipped[name], free[name] * 0.1, rtol=1e-5, atol=1e-7)


def test_clip_above_norm_leaves_delta_alone():
    x, y = _blobs(n=64)
    base = init_weights(CLF, seed=4)
    free, _ = train_local(CLF, base, x, y, Hyper(lr=0.1), _rng(1))
    same, stats = train_local(
        CLF, base, x, y, Hyper(lr=0.1, dp_clip=2 * global_norm(free) + 1e-3), _rng(1)
    )
    assert not stats.clipped
    for name in free:
        np.testing.assert_array_equal(same[name], free[name])


@settings(max_examples=50, deadline=None)
@given(
    st.floats(1e-3, 1e3),
    st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=20),
)
def test_clip_delta_property(max_norm, values):
    delta = {"w0": np.array(values, dtype=np.float32)}
    out, clipped = clip_delta(delta, max_norm)
    assert global_norm(out) <= max_norm * (1 + 1e-6)
    assert clipped == (global_norm(delta) > max_norm)
    if not clipped:
        np.testing.assert_array_equal(out["w0"], delta["w0"])


def test_fedprox_shrinks_delta():
    x, y = _blobs(n=128)
    base = init_weights(CLF, seed=5)
    plain, _ = train_local(CLF, base, x, y, Hyper(lr=0.1, epochs=5, mu=0.0), _rng(2))
    prox, _ = train_local(CLF, base, x, y, Hyper(lr=0.1, epochs=5, mu=1.0), _rng(2))
    assert global_norm(prox) < 0.9 * global_norm(plain)
    assert global_norm(prox) > 0


def test_same_seed_same_delta_different_seed_different_delta():
    x, y = _blobs(n=100)
    base = init_weights(CLF, seed=6)
    hyper = Hyper(lr=0.1, epochs=2, batch=8)
    a, sa = train_local(CLF, base, x, y, hyper, _rng(42))
    b, sb = train_local(CLF, base, x, y, hyper, _rng(42))
    c, _ = train_local(CLF, base, x, y, hyper, _rng(43))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert sa.loss == sb.loss
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_noise_is_seeded_and_scaled():
    x, y = _blobs(n=64)
    base = init_weights(CLF, seed=7)
    hyper = Hyper(lr=0.1, dp_clip=0.5, dp_noise=1.0)
    noisy1, _ = train_local(CLF, base, x, y, hyper, _rng(3))
    noisy2, _ = train_local(CLF, base, x, y, hyper, _rng(3))
    clean, _ = train_local(CLF, base, x, y, Hyper(lr=0.1, dp_clip=0.5), _rng(3))
    for name in noisy1:
        np.testing.assert_array_equal(noisy1[name], noisy2[name])
    noise = np.concatenate([(noisy1[k] - clean[k]).ravel() for k in clean])
    # sigma = noise * clip = 0.5, over all of CLF's parameters.
    assert noise.size == sum(v.size for v in clean.values())
    assert 0.3 < float(noise.std()) < 0.7


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 60), batch=st.integers(1, 20), epochs=st.integers(1, 3))
def test_stats_samples_and_steps(n, batch, epochs):
    x, y = _blobs(n=n, seed=n)
    base = init_weights(CLF, seed=0)
    _, stats = train_local(CLF, base, x, y, Hyper(lr=0.01, epochs=epochs, batch=batch), _rng())
    assert stats.samples == n
    assert stats.steps == epochs * math.ceil(n / batch)
    assert stats.seconds >= 0
    assert stats.clipped is False


# -- Hyper validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0.0},
        {"lr": -0.1},
        {"lr": float("nan")},
        {"lr": float("inf")},
        {"epochs": 0},
        {"epochs": -1},
        {"epochs": 1.5},
        {"epochs": 1001},
        {"batch": 0},
        {"batch": -4},
        {"batch": 2.0},
        {"mu": -0.1},
        {"mu": float("nan")},
        {"dp_clip": -1.0},
        {"dp_clip": float("inf")},
        {"dp_noise": -1.0},
        {"dp_noise": 0.5},  # noise without clip has no scale
    ],
)
def test_hyper_rejects_bad_values(kwargs):
    with pytest.raises(ModelError) as info:
        Hyper(**kwargs)
    assert info.value.reason == "bad_hyper"


def test_hyper_defaults_and_dict():
    h = Hyper()
    assert h.to_dict() == {"lr": 0.05, "epochs": 1, "batch": 16, "mu": 0.0, "clip": 0.0}
    assert (
        Hyper.from_wire(Hyper(lr=0.2, epochs=3, batch=4, mu=0.1, dp_clip=1.0).to_dict()).lr == 0.2
    )


# -- bad inputs ----------------------------------------------------------------------------


def test_rejects_bad_inputs():
    x, y = _blobs(n=10)
    base = init_weights(CLF, seed=0)
    with pytest.raises(ModelError) as info:
        train_local(CLF, base, x[:0], y[:0], Hyper(), _rng())
    assert info.value.reason == "no_data"
    with pytest.raises(ModelError) as info:
        train_local(CLF, base, x[:, :1], y, Hyper(), _rng())
    assert info.value.reason == "bad_data"
    with pytest.raises(ModelError) as info:
        train_local(CLF, {"w0": base["w0"]}, x, y, Hyper(), _rng())
    assert info.value.reason == "bad_weights"


@pytest.mark.parametrize(
    "labels",
    [
        np.zeros(9, dtype=np.int64),  # fewer labels than rows
        np.zeros(11, dtype=np.int64),  # more labels than rows
        np.array([0, 1, 0, 1, 2, 0, 1, 0, 1, 0]),  # class 2 of a 2-class model
        np.array([0, 1, 0, 1, -1, 0, 1, 0, 1, 0]),  # negative class
        np.zeros((10, 1), dtype=np.int64),  # a column, not a vector
    ],
)
def test_rejects_labels_that_do_not_fit(labels):
    x, _ = _blobs(n=10)
    base = init_weights(CLF, seed=0)
    with pytest.raises(ModelError) as info:
        train_local(CLF, base, x, labels, Hyper(batch=4), _rng())
    assert info.value.reason == "bad_data"


# -- cooperative stop and time budget -------------------------------------------------------


class _StopAfter(threading.Event):
    """A stop flag that another thread sets after the trainer has checked it ``n`` times."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.checks, self.n = 0, n

    def is_set(self) -> bool:
        self.checks += 1
        if self.checks > self.n:
            self.set()
        return super().is_set()


def test_a_stop_flag_ends_training_between_mini_batches():
    x, y = _blobs(n=200)
    stop = _StopAfter(25)
    with pytest.raises(TrainingStopped) as info:
        # 1000 epochs of batch 1 is 200,000 steps: far more than it gets to run.
        train_local(CLF, init_weights(CLF), x, y, Hyper(epochs=1000, batch=1), _rng(), stop=stop)
    assert info.value.reason == "stopped"
    assert "after 25 steps" in info.value.message and stop.checks == 26


def test_a_stop_from_another_thread_ends_a_long_run_at_once():
    x, y = _blobs(n=200)
    stop, errors = threading.Event(), []
    hyper = Hyper(epochs=1000, batch=1)  # seconds of work if nothing stops it

    def run() -> None:
        try:
            train_local(CLF, init_weights(CLF), x, y, hyper, _rng(), stop=stop)
        except TrainingStopped as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    stop.set()
    stopped_at = time.monotonic()
    worker.join(timeout=5)
    assert not worker.is_alive() and time.monotonic() - stopped_at < 1.0
    assert [e.reason for e in errors] == ["stopped"]


def test_max_seconds_bounds_a_run():
    x, y = _blobs(n=200)
    started = time.monotonic()
    with pytest.raises(TrainingStopped) as info:
        train_local(
            CLF, init_weights(CLF), x, y, Hyper(epochs=1000, batch=1), _rng(), max_seconds=0.2
        )
    assert info.value.reason == "train_timeout"
    assert "longer than 0.2 s" in info.value.message
    assert time.monotonic() - started < 2.0


def test_an_unset_stop_flag_and_a_loose_budget_change_nothing():
    x, y = _blobs()
    base, hyper = init_weights(CLF, seed=1), Hyper(epochs=2, batch=8)
    plain, _ = train_local(CLF, base, x, y, hyper, _rng(3))
    watched, _ = train_local(
        CLF, base, x, y, hyper, _rng(3), stop=threading.Event(), max_seconds=60.0
    )
    for name in plain:
        np.testing.assert_array_equal(plain[name], watched[name])


@pytest.mark.parametrize(("clip", "z"), [(0.5, 2.0), (1.0, 1.0), (3.0, 0.5)])
def test_dp_noise_has_std_z_times_clip_around_the_clipped_delta(clip, z):
    """On 40 000 coordinates the sample std of N(0, σ²) is within 2 % of σ far beyond 5σ."""
    from fedmq.training import _clip_and_noise

    rng = _rng(11)
    delta = {"w0": rng.normal(0, 1, (200, 100)).astype(np.float32), "b0": np.ones(100, "f4")}
    delta["w1"] = rng.normal(0, 1, (200, 100)).astype(np.float32)
    clean, clipped = _clip_and_noise(delta, Hyper(dp_clip=clip), _rng(12))
    assert clipped and global_norm(clean) <= clip * (1 + 1e-6)
    noisy, _ = _clip_and_noise(delta, Hyper(dp_clip=clip, dp_noise=z), _rng(12))
    noise = np.concatenate([(noisy[k] - clean[k]).ravel().astype(np.float64) for k in clean])
    assert float(noise.std()) == pytest.approx(z * clip, rel=0.02)
    assert abs(float(noise.mean())) < 5 * z * clip / np.sqrt(noise.size)


def test_hyper_writes_noise_only_when_set():
    assert "noise" not in Hyper(dp_clip=1.0).to_dict()
    assert Hyper(dp_clip=1.0, dp_noise=0.5).to_dict()["noise"] == 0.5
