"""tools.sim.rawdata: raw sensor readings and raw digits, written as a fleet's CSV files."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from fedmq.data import load_csv
from fedmq.schema import Schema
from tools.sim.rawdata import (
    ACTIVITIES,
    centralized_logreg,
    raw_digits,
    sensor_readings,
    write_fleet_csvs,
)


def header(path) -> list[str]:
    with path.open(newline="") as fh:
        return next(csv.reader(fh))


def test_sensor_units_span_seven_orders_of_magnitude_with_string_classes():
    table = sensor_readings(600, seed=3)
    std = table.x.std(axis=0)
    assert std.max() / std.min() > 1e6
    assert abs(table.x[:, table.features.index("pressure_pa")].mean() - 101325) < 5e3
    assert set(table.labels.tolist()) == set(ACTIVITIES)
    np.testing.assert_array_equal(sensor_readings(600, seed=3).x, table.x)
    assert not np.array_equal(sensor_readings(600, seed=4).x, table.x)


def test_raw_digits_are_unscaled_pixels_and_integer_labels():
    table = raw_digits()
    assert table.x.min() == 0 and table.x.max() == 16
    assert np.array_equal(table.x, np.round(table.x))
    assert table.labels.dtype == np.int64 and set(table.labels.tolist()) == set(range(10))


def test_fleet_csvs_split_every_row_once_with_a_header_and_a_named_label(tmp_path):
    table = sensor_readings(500, seed=1)
    files = write_fleet_csvs(tmp_path, table, devices=5, alpha=0.5, seed=7)
    assert [p.name for p in files.devices] == [f"device-{i}.csv" for i in range(5)]
    assert files.schema.classes == ("idle", "running", "walking")
    for path in (*files.devices, files.test):
        assert header(path) == [*table.features, "activity"]
    parts = [load_csv(p, schema=files.schema) for p in files.devices]
    test = load_csv(files.test, schema=files.schema)
    assert len(test) == 100 and sum(len(d) for d in parts) == 400
    rows = np.concatenate([d.x for d in (*parts, test)])
    # Every generated reading appears exactly once, its values read back exactly.
    want = table.x.astype(np.float32)
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, want.tolist()))
    # Dirichlet(0.5) skew: the devices' class mixes differ.
    mixes = np.array([np.bincount(d.y, minlength=3) / len(d) for d in parts])
    assert np.ptp(mixes, axis=0).max() > 0.2


def test_shuffled_columns_differ_per_device_and_still_load_through_the_schema(tmp_path):
    files = write_fleet_csvs(tmp_path, sensor_readings(300), shuffle_columns=True)
    orders = {tuple(header(p)) for p in files.devices}
    assert len(orders) > 1
    plain = write_fleet_csvs(tmp_path / "plain", sensor_readings(300))
    for shuffled, ordered in zip(files.devices, plain.devices, strict=True):
        a, b = load_csv(shuffled, schema=files.schema), load_csv(ordered, schema=plain.schema)
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)


def test_digits_csvs_hold_pixel_integers(tmp_path):
    files = write_fleet_csvs(tmp_path, raw_digits())
    assert files.schema == Schema.from_csv(files.test, "digit")
    with files.devices[0].open(newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    assert all(cell.isdigit() and int(cell) <= 16 for row in rows for cell in row)


@pytest.mark.parametrize(("make", "floor"), [(sensor_readings, 0.93), (raw_digits, 0.93)])
def test_centralized_logreg_on_standardized_features_is_the_reference(tmp_path, make, floor):
    files = write_fleet_csvs(tmp_path, make())
    acc = centralized_logreg(files.devices, files.test, files.schema)
    test = load_csv(files.test, schema=files.schema)
    majority = np.bincount(test.y).max() / len(test)
    assert acc >= floor > majority
