"""tools.sim.partition: every scheme gives disjoint, covering, non-empty parts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmq.errors import ConfigError
from tools.sim.partition import dirichlet, iid, parse_partition, partition, shards


def check_parts(parts: list[np.ndarray], n: int, n_devices: int) -> None:
    assert len(parts) == n_devices
    assert all(len(p) > 0 for p in parts), [len(p) for p in parts]
    assert all(p.dtype == np.int64 for p in parts)
    joined = np.concatenate(parts)
    assert len(joined) == n  # disjoint (no index twice) ...
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))  # ... and covering


@st.composite
def split_problem(draw):
    n_classes = draw(st.integers(1, 12))
    n = draw(st.integers(1, 300))
    labels = np.array(draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n)))
    n_devices = draw(st.integers(1, min(n, 40)))
    seed = draw(st.integers(0, 2**32 - 1))
    return labels, n_devices, seed


@settings(max_examples=150, deadline=None)
@given(problem=split_problem(), alpha=st.floats(0.001, 100.0))
def test_iid_and_dirichlet_are_partitions(problem, alpha):
    labels, n_devices, seed = problem
    check_parts(iid(len(labels), n_devices, np.random.default_rng(seed)), len(labels), n_devices)
    parts = dirichlet(labels, n_devices, alpha, np.random.default_rng(seed))
    check_parts(parts, len(labels), n_devices)


@settings(max_examples=150, deadline=None)
@given(problem=split_problem(), k=st.integers(1, 5))
def test_shards_are_partitions(problem, k):
    labels, n_devices, seed = problem
    if n_devices * k > len(labels):
        with pytest.raises(ConfigError, match="needs at least"):
            shards(labels, n_devices, k, np.random.default_rng(seed))
        return
    check_parts(shards(labels, n_devices, k, np.random.default_rng(seed)), len(labels), n_devices)


@settings(max_examples=50, deadline=None)
@given(problem=split_problem())
def test_partition_is_deterministic_by_seed(problem):
    labels, n_devices, seed = problem
    for spec in ("iid", "dirichlet:0.3", "shards:1"):
        a = partition(spec, labels, n_devices, np.random.default_rng(seed))
        b = partition(spec, labels, n_devices, np.random.default_rng(seed))
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_different_seeds_give_different_splits():
    labels = np.arange(1000) % 10
    a = partition("dirichlet:0.5", labels, 10, np.random.default_rng(1))
    b = partition("dirichlet:0.5", labels, 10, np.random.default_rng(2))
    assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def mean_label_entropy(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean over devices of the entropy (bits) of the device's label distribution."""
    out = []
    for p in parts:
        freq = np.bincount(labels[p], minlength=labels.max() + 1) / len(p)
        freq = freq[freq > 0]
        out.append(float(-(freq * np.log2(freq)).sum()))
    return float(np.mean(out))


def test_small_alpha_is_more_skewed_than_iid():
    labels = np.random.default_rng(0).integers(0, 10, 5000)
    rng = np.random.default_rng(42)
    h_iid = mean_label_entropy(partition("iid", labels, 20, rng), labels)
    h_big = mean_label_entropy(partition("dirichlet:100", labels, 20, rng), labels)
    h_small = mean_label_entropy(partition("dirichlet:0.1", labels, 20, rng), labels)
    h_shards = mean_label_entropy(partition("shards:2", labels, 20, rng), labels)
    assert h_iid > 3.2  # log2(10) = 3.32: nearly uniform
    assert h_big > 3.1  # large alpha approaches IID
    assert h_small < 2.0 < h_iid
    assert h_shards < 1.5  # two shards of sorted labels: mostly 2 classes a device


def test_shards_give_each_device_few_classes():
    labels = np.repeat(np.arange(10), 100)
    parts = shards(labels, 10, 2, np.random.default_rng(0))
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)
    assert all(len(p) == 100 for p in parts)


def test_dirichlet_fills_empty_devices():
    # One class, tiny alpha: nearly all samples land on one device; none stays empty.
    labels = np.zeros(50, dtype=np.int64)
    parts = dirichlet(labels, 50, 0.001, np.random.default_rng(0))
    check_parts(parts, 50, 50)


def test_iid_sizes_are_balanced():
    parts = iid(103, 10, np.random.default_rng(0))
    assert sorted({len(p) for p in parts}) == [10, 11]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("iid", ("iid", None)),
        (" iid ", ("iid", None)),
        ("dirichlet:0.5", ("dirichlet", 0.5)),
        ("dirichlet:10", ("dirichlet", 10.0)),
        ("dirichlet:1e-3", ("dirichlet", 0.001)),
        ("shards:1", ("shards", 1)),
        ("shards:3", ("shards", 3)),
    ],
)
def test_parse_partition(spec, expected):
    assert parse_partition(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "IID",
        "iid:1",
        "random",
        "dirichlet",
        "dirichlet:",
        "dirichlet:0",
        "dirichlet:-1",
        "dirichlet:nan",
        "dirichlet:inf",
        "dirichlet:abc",
        "shards",
        "shards:0",
        "shards:-2",
        "shards:1.5",
        "shards:two",
        None,
        3,
    ],
)
def test_parse_partition_errors(spec):
    with pytest.raises(ConfigError) as info:
        parse_partition(spec)
    assert info.value.reason == "bad_partition"
    assert "dirichlet:ALPHA" in str(info.value) and "shards:K" in str(info.value)


def test_more_devices_than_samples():
    for spec in ("iid", "dirichlet:1", "shards:1"):
        with pytest.raises(ConfigError) as info:
            partition(spec, np.zeros(3, dtype=np.int64), 4, np.random.default_rng(0))
        assert info.value.reason == "too_many_devices"
        assert "3 samples across 4 devices" in str(info.value)


def test_zero_devices():
    with pytest.raises(ConfigError):
        partition("iid", np.zeros(3, dtype=np.int64), 0, np.random.default_rng(0))


def test_label_schemes_need_class_labels():
    targets = np.random.default_rng(0).random((20, 1)).astype(np.float32)
    check_parts(partition("iid", targets, 4, np.random.default_rng(0)), 20, 4)
    for spec in ("dirichlet:1", "shards:2"):
        with pytest.raises(ConfigError, match="only be split iid"):
            partition(spec, targets, 4, np.random.default_rng(0))
