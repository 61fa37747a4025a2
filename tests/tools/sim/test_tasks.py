"""tools.sim.tasks: the bundled digits and linreg tasks."""

from __future__ import annotations

import numpy as np
import pytest

from fedmq.errors import ConfigError
from tools.sim.tasks import TASKS, centralized_baseline, load_task, stratified_split


@pytest.fixture(scope="module")
def digits():
    return load_task("digits")


def test_digits_shapes_and_model(digits):
    assert digits.name == "digits" and "digits" in TASKS
    assert digits.train.x.shape == (1437, 64) and digits.train.y.shape == (1437,)
    assert digits.test.x.shape == (360, 64) and digits.test.y.shape == (360,)
    assert digits.train.x.dtype == np.float32 and digits.train.y.dtype == np.int64
    assert digits.arch.layers == (64, 32, 10) and digits.arch.is_classifier
    assert digits.hyper.lr == 0.05 and digits.hyper.epochs == 1 and digits.hyper.batch == 16
    assert digits.split_seed == 0 and "split seed 0" in digits.description


def test_digits_split_is_stratified(digits):
    train = np.bincount(digits.train.y, minlength=10)
    test = np.bincount(digits.test.y, minlength=10)
    total = train + test
    # Each class keeps its share of the test set to within one sample.
    assert np.all(np.abs(test - total * 360 / 1797) < 1)
    assert test.sum() == 360


def test_digits_split_has_no_overlap(digits):
    train_rows = {row.tobytes() for row in digits.train.x}
    # Digits has a few duplicate images; the split itself must not copy rows across.
    overlap = sum(row.tobytes() in train_rows for row in digits.test.x)
    assert overlap < 5


def test_digits_standardized_with_train_stats(digits):
    mean = digits.train.x.mean(axis=0)
    std = digits.train.x.std(axis=0)
    np.testing.assert_allclose(mean, 0, atol=1e-5)
    varying = std > 0
    np.testing.assert_allclose(std[varying], 1, atol=1e-4)
    assert np.all(digits.train.x[:, ~varying] == 0)  # constant pixels map to 0, not NaN
    assert np.isfinite(digits.test.x).all()


def test_digits_split_is_independent_of_seed(digits):
    other = load_task("digits", seed=123)
    np.testing.assert_array_equal(other.test.x, digits.test.x)
    np.testing.assert_array_equal(other.test.y, digits.test.y)
    np.testing.assert_array_equal(other.train.y, digits.train.y)


def test_linreg_fits_the_worked_example():
    task = load_task("linreg", seed=0)
    assert task.train.x.shape == (1000, 1) and task.test.x.shape == (200, 1)
    assert task.train.y.shape == (1000, 1) and task.train.y.dtype == np.float32
    assert not task.arch.is_classifier and task.arch.layers == (1, 1)
    assert task.train.x.min() >= 0 and task.train.x.max() < 1
    a = np.c_[task.train.x[:, 0], np.ones(1000)]
    (w, b), *_ = np.linalg.lstsq(a, task.train.y[:, 0], rcond=None)
    assert abs(w - 3) < 0.05 and abs(b - 2) < 0.05
    residual = task.train.y[:, 0] - (w * task.train.x[:, 0] + b)
    assert 0.08 < residual.std() < 0.12  # the N(0, 0.1^2) noise


def test_linreg_data_follows_the_seed():
    a, b, c = load_task("linreg", seed=1), load_task("linreg", seed=1), load_task("linreg", seed=2)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.test.y, b.test.y)
    assert not np.array_equal(a.train.x, c.train.x)
    assert a.split_seed == 1 and "seed 1" in a.description


def test_unknown_task():
    with pytest.raises(ConfigError) as info:
        load_task("mnist")
    assert info.value.reason == "unknown_task" and "digits" in str(info.value)


def test_stratified_split_counts():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    train, test = stratified_split(labels, 0.25, np.random.default_rng(0))
    assert len(test) == 25 and len(train) == 75
    # Ideal shares 12.5 / 7.5 / 5: the spare slot goes to the first largest remainder.
    assert np.bincount(labels[test]).tolist() == [13, 7, 5]
    assert len(np.intersect1d(train, test)) == 0


def test_centralized_baselines(digits):
    assert centralized_baseline(digits, epochs=5) > 0.9
    assert centralized_baseline(load_task("linreg"), epochs=10) < 0.015  # noise floor 0.01
