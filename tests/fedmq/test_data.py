"""fedmq.data: CSV/NPZ loading and saving, through a schema or not, the Dataset invariants,
text tables, standardize."""

from __future__ import annotations

import contextlib
import csv
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedmq.data import (
    Dataset,
    canonical_task,
    check_fits,
    describe,
    load_csv,
    load_dataset,
    load_npz,
    read_table,
    save_csv,
    save_npz,
    standardize,
)
from fedmq.errors import ConfigError, DataError
from fedmq.schema import Schema


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error(fn, *args, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return info.value


# --------------------------------------------------------------------------- Dataset


def test_dataset_normalizes_dtypes_and_shapes():
    ds = Dataset(np.arange(6, dtype=np.float64).reshape(3, 2), np.array([[0], [1], [2]]))
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64 and ds.y.shape == (3,)
    assert len(ds) == 3 and ds.n_features == 2 and ds.task == "classification"
    reg = Dataset(np.ones((3, 2)), np.array([0.5, 1.5, 2.5]))
    assert reg.y.dtype == np.float32 and reg.y.shape == (3, 1) and reg.task == "regression"


@pytest.mark.parametrize(
    ("x", "y", "reason"),
    [
        (np.ones(3), np.zeros(3, dtype=int), "bad_shape"),
        (np.ones((0, 2)), np.zeros(0, dtype=int), "bad_shape"),
        (np.ones((3, 0)), np.zeros(3, dtype=int), "bad_shape"),
        (np.array([["a", "b"]]), np.zeros(1, dtype=int), "bad_shape"),
        (np.ones((3, 2)), np.zeros(2, dtype=int), "bad_shape"),
        (np.ones((3, 2)), np.zeros((3, 2), dtype=int), "bad_shape"),
        (np.ones((3, 2)), np.array([0, -1, 2]), "bad_label"),
        (np.ones((3, 2)), np.array(["a", "b", "c"]), "bad_shape"),
        (np.array([[1.0, np.nan], [1, 2]]), np.zeros(2, dtype=int), "not_finite"),
        (np.array([[1.0, np.inf], [1, 2]]), np.zeros(2, dtype=int), "not_finite"),
        (np.ones((2, 2)), np.array([1.0, np.nan]), "not_finite"),
        (np.ones((2, 2)), np.array([1.0, 1e300]), "not_finite"),  # overflows float32
    ],
)
def test_dataset_rejects(x, y, reason):
    err = error(Dataset, x, y)
    assert err.reason == reason


def test_dataset_is_frozen():
    ds = Dataset(np.ones((2, 2)), np.array([0, 1]))
    with pytest.raises(AttributeError):
        ds.x = np.zeros((2, 2))  # type: ignore[misc]


# ----------------------------------------------------------------------------- CSV


def test_csv_with_header_by_name_and_index(tmp_path):
    path = write(tmp_path, "d.csv", "a, b ,label\n1,2,0\n\n3.5,-4e1,1\n")
    ds = load_csv(path, label="label")
    np.testing.assert_array_equal(ds.x, [[1, 2], [3.5, -40]])
    np.testing.assert_array_equal(ds.y, [0, 1])
    assert load_csv(path).y.tolist() == [0, 1]  # default: last column
    first = load_csv(path, label="a", task="regression")
    np.testing.assert_array_equal(first.x, [[2, 0], [-40, 1]])
    assert first.y.shape == (2, 1) and first.y[:, 0].tolist() == [1.0, 3.5]
    assert load_csv(path, label=0, task="regress").y[:, 0].tolist() == [1.0, 3.5]
    assert load_csv(path, label="-1").y.tolist() == [0, 1]  # an index given as text


def test_csv_without_header(tmp_path):
    path = write(tmp_path, "d.csv", "1,2,3\n4,5,6\n")
    ds = load_csv(path, label=0)
    np.testing.assert_array_equal(ds.x, [[2, 3], [5, 6]])
    assert ds.y.tolist() == [1, 4]


def test_csv_utf8_bom_and_crlf(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("\ufeffa,label\r\n1,0\r\n2,1\r\n".encode())
    ds = load_csv(path, label="label")
    assert ds.y.tolist() == [0, 1] and ds.x[:, 0].tolist() == [1, 2]


@pytest.mark.parametrize(
    ("text", "kwargs", "reason", "fragments"),
    [
        ("", {}, "empty_file", ["empty"]),
        ("\n \n", {}, "empty_file", ["empty"]),
        ("a,b,label\n", {}, "no_rows", ["no data rows"]),
        ("1,2,0\n3,x,1\n", {}, "bad_value", [":2:", "column 2", "'x' is not a number"]),
        ("a,b,c\n1,,0\n", {}, "bad_value", [":2:", "column 2 ('b')", "empty"]),
        ("a,2,0\n", {}, "bad_value", [":1:", "mixes numbers and text"]),
        ("1,2,0\n3,4\n", {}, "ragged", [":2:", "2 columns, expected 3"]),
        ("a,b,c\n1,2,3\n4,5,6,7\n", {}, "ragged", [":3:", "4 columns, expected 3"]),
        ("1,nan,0\n", {}, "not_finite", [":1:", "'nan' is not finite"]),
        ("1,2,0\n1,-inf,0\n", {}, "not_finite", [":2:", "'-inf'"]),
        ("1,1e39,0\n", {}, "not_finite", [":1:", "float32"]),
        ("1,2,0.5\n", {}, "bad_label", [":1:", "label 0.5", "class index"]),
        ("1,2,-1\n", {}, "bad_label", [":1:", "label -1"]),
        ("1,2,1e300\n", {"task": "regression"}, "not_finite", ["float32"]),
        ("a,b,c\n1,2,0\n", {"label": "zz"}, "no_label", ["'zz' not found", "['a', 'b', 'c']"]),
        ("1,2,0\n", {"label": "label"}, "no_label", ["no header row", "column index"]),
        ("1,2,0\n", {"label": 3}, "no_label", ["index 3", "3 columns"]),
        ("1,2,0\n", {"label": -4}, "no_label", ["index -4"]),
        ("a,a,b\n1,2,0\n", {"label": "a"}, "no_label", ["more than once"]),
        ("1\n2\n", {}, "bad_shape", ["at least two columns"]),
    ],
)
def test_csv_errors_are_clear(tmp_path, text, kwargs, reason, fragments):
    path = write(tmp_path, "bad.csv", text)
    err = error(load_csv, path, **kwargs)
    assert err.reason == reason
    assert str(path) in str(err)
    for fragment in fragments:
        assert fragment in str(err)


def test_csv_missing_file_and_directory(tmp_path):
    err = error(load_csv, tmp_path / "nope.csv")
    assert err.reason == "no_file" and "nope.csv" in str(err) and "no such file" in str(err)
    assert error(load_csv, tmp_path).reason == "no_file"


def test_csv_not_utf8(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"a,b\n\xff\xfe,1\n")
    assert error(load_csv, path).reason == "bad_file"


def test_csv_round_trip_with_and_without_header(tmp_path):
    ds = Dataset(np.array([[0.1, -2.5e-7], [3.0, 1e30]], dtype=np.float32), np.array([3, 0]))
    for header in (True, False):
        path = tmp_path / f"d{header}.csv"
        save_csv(path, ds, header=header)
        back = load_csv(path)
        np.testing.assert_array_equal(back.x, ds.x)
        np.testing.assert_array_equal(back.y, ds.y)
    reg = Dataset(ds.x, np.array([0.1, -7.25], dtype=np.float32))
    save_csv(tmp_path / "r.csv", reg)
    back = load_csv(tmp_path / "r.csv", label="y0", task="regression")
    np.testing.assert_array_equal(back.y, reg.y)


# ----------------------------------------------------------------------------- NPZ


def test_npz_round_trip(tmp_path):
    ds = Dataset(np.random.default_rng(0).normal(size=(5, 3)), np.array([0, 1, 2, 1, 0]))
    path = tmp_path / "d.npz"
    save_npz(path, ds)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]  # no temp file left
    back = load_npz(path)
    np.testing.assert_array_equal(back.x, ds.x)
    np.testing.assert_array_equal(back.y, ds.y)
    reg = Dataset(ds.x, np.linspace(0, 1, 5))
    save_npz(tmp_path / "r.data", reg)  # the exact path, no ".npz" appended
    back = load_npz(tmp_path / "r.data", task="regression")
    assert back.y.shape == (5, 1) and back.y.dtype == np.float32
    np.testing.assert_array_equal(back.y, reg.y)


def test_npz_accepts_integral_float_labels_and_column(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((3, 2)), y=np.array([[0.0], [2.0], [1.0]]))
    assert load_npz(path).y.tolist() == [0, 2, 1]


@pytest.mark.parametrize(
    ("arrays", "kwargs", "reason", "fragment"),
    [
        ({"x": np.ones((2, 2))}, {}, "missing_array", "missing ['y']"),
        ({"a": np.ones(2)}, {}, "missing_array", "missing ['x', 'y']"),
        ({"x": np.ones(2), "y": np.zeros(2)}, {}, "bad_shape", "2-D"),
        ({"x": np.ones((2, 2)), "y": np.zeros((2, 2))}, {}, "bad_shape", "(n,) or (n, 1)"),
        ({"x": np.ones((2, 2)), "y": np.zeros(3)}, {}, "bad_shape", "2 rows but y has 3"),
        ({"x": np.ones((0, 2)), "y": np.zeros(0)}, {}, "bad_shape", "at least one row"),
        ({"x": np.array([["a"]]), "y": np.zeros(1)}, {}, "bad_shape", "numbers"),
        ({"x": np.array([[1.0, np.nan]]), "y": np.zeros(1)}, {}, "not_finite", "x[0, 1]"),
        ({"x": np.array([[1e300]]), "y": np.zeros(1)}, {}, "not_finite", "x[0, 0]"),
        ({"x": np.ones((2, 1)), "y": np.array([0, np.inf])}, {}, "not_finite", "y[1]"),
        ({"x": np.ones((2, 1)), "y": np.array([0, 1.5])}, {}, "bad_label", "y[1]"),
        ({"x": np.ones((2, 1)), "y": np.array([0, -2])}, {}, "bad_label", "label -2"),
        (
            {"x": np.ones((1, 1)), "y": np.array([1e300])},
            {"task": "regression"},
            "not_finite",
            "float32",
        ),
    ],
)
def test_npz_errors_are_clear(tmp_path, arrays, kwargs, reason, fragment):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    err = error(load_npz, path, **kwargs)
    assert err.reason == reason
    assert str(path) in str(err) and fragment in str(err)


def test_npz_not_a_zip_and_missing(tmp_path):
    path = write(tmp_path, "bad.npz", "this is not a zip file")
    err = error(load_npz, path)
    assert err.reason == "bad_file" and "not a readable .npz" in str(err)
    assert error(load_npz, tmp_path / "nope.npz").reason == "no_file"


def test_npz_refuses_pickled_objects(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([[object()]], dtype=object), y=np.zeros(1))
    assert error(load_npz, path).reason == "bad_file"


# ----------------------------------------------------------------------- load_dataset


def test_load_dataset_dispatches_on_suffix(tmp_path):
    ds = Dataset(np.ones((2, 2)), np.array([0, 1]))
    save_csv(tmp_path / "d.CSV", ds)
    save_npz(tmp_path / "d.npz", ds)
    assert load_dataset(tmp_path / "d.CSV", label="label").y.tolist() == [0, 1]
    # The agent always passes its ``label`` setting; an NPZ file ignores it.
    assert load_dataset(str(tmp_path / "d.npz"), label="label").y.tolist() == [0, 1]
    err = error(load_dataset, tmp_path / "d.txt")
    assert err.reason == "bad_suffix" and ".csv or .npz" in str(err)
    assert error(load_dataset, tmp_path / "noext").reason == "bad_suffix"


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("classification", "classification"),
        ("classify", "classification"),
        ("regression", "regression"),
        ("regress", "regression"),
    ],
)
def test_task_names(tmp_path, task, expected):
    assert canonical_task(task) == expected
    path = write(tmp_path, "d.csv", "1,2\n3,4\n")
    assert load_dataset(path, task=task).task == expected
    assert load_dataset(path, task=None).task == "classification"  # None: the default


@pytest.mark.parametrize("task", ["digits", "linreg", "", "Classification"])
def test_bad_task_name(tmp_path, task):
    path = write(tmp_path, "d.csv", "1,2\n")
    with pytest.raises(ConfigError) as info:
        load_dataset(path, task=task)
    assert info.value.reason == "bad_task" and "classification" in str(info.value)


# ----------------------------------------------------------------------- standardize


def test_standardize():
    rng = np.random.default_rng(1)
    train = rng.normal(5, 3, size=(200, 3))
    train[:, 2] = 0.1  # a constant column: std 1, not a division by zero
    test = rng.normal(5, 3, size=(50, 3))
    test[:, 2] = 0.1
    mean, std, (tr, te) = standardize(train, test)
    assert mean.dtype == std.dtype == tr.dtype == te.dtype == np.float32
    np.testing.assert_allclose(tr[:, :2].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(tr[:, :2].std(axis=0), 1, atol=1e-5)
    assert std[2] == 1
    assert np.all(np.abs(tr[:, 2]) < 1e-6) and np.all(np.abs(te[:, 2]) < 1e-6)
    np.testing.assert_allclose(te, (test - mean) / std, rtol=1e-5, atol=1e-5)
    with pytest.raises(DataError):
        standardize(train, np.ones((2, 4)))
    with pytest.raises(DataError):
        standardize(np.ones(3))


# ------------------------------------------------------------------- property tests

finite_f32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
matrices = hnp.arrays(
    np.float32,
    shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=8),
    elements=finite_f32,
)


@settings(max_examples=60, deadline=None)
@given(x=matrices, data=st.data())
def test_random_matrices_round_trip(x, data):
    n = x.shape[0]
    labels = data.draw(hnp.arrays(np.int64, n, elements=st.integers(0, 9)))
    targets = data.draw(hnp.arrays(np.float32, n, elements=finite_f32))
    header = data.draw(st.booleans())
    with tempfile.TemporaryDirectory() as tmp:
        for y, task in ((labels, "classification"), (targets, "regression")):
            ds = Dataset(x, y)
            csv_path, npz_path = Path(tmp) / "d.csv", Path(tmp) / "d.npz"
            save_csv(csv_path, ds, header=header)
            save_npz(npz_path, ds)
            for back in (load_dataset(csv_path, task=task), load_dataset(npz_path, task=task)):
                assert back.x.dtype == np.float32 and back.y.dtype == ds.y.dtype
                np.testing.assert_array_equal(back.x, ds.x)
                np.testing.assert_array_equal(back.y, ds.y)


# ------------------------------------------------------------- through a schema

SENSOR = Schema(("temp_c", "pressure_pa"), "activity", "classification", ("idle", "walking"))


def test_a_schema_reads_columns_by_name_in_its_order_and_maps_class_names(tmp_path):
    path = write(
        tmp_path, "dev.csv", "activity,pressure_pa,temp_c\nwalking,101325,20.5\nidle,99000,19\n"
    )
    ds = load_csv(path, schema=SENSOR)
    np.testing.assert_array_equal(ds.x, np.array([[20.5, 101325], [19, 99000]], np.float32))
    assert ds.y.tolist() == [1, 0]
    assert load_dataset(path, schema=SENSOR, label="activity", task="classify").y.tolist() == [1, 0]


def test_a_regression_schema_reads_float_targets(tmp_path):
    schema = Schema(("a",), "y", "regression")
    ds = load_csv(write(tmp_path, "r.csv", "y,a\n0.25,1\n-3,2\n"), schema=schema)
    assert ds.task == "regression" and ds.y[:, 0].tolist() == [0.25, -3.0]


def test_integer_class_names_match_numerically(tmp_path):
    schema = Schema(("a",), "digit", "classification", ("0", "2", "10"))
    ds = load_csv(write(tmp_path, "d.csv", "a,digit\n1,10\n2,2.0\n3,0\n"), schema=schema)
    assert ds.y.tolist() == [2, 1, 0]


@pytest.mark.parametrize(
    ("text", "kwargs", "reason", "fragments"),
    [
        ("activity,temp_c\nidle,1\n", {}, "missing_feature", ["['pressure_pa']"]),
        (
            "activity,temp_c,pressure_pa,ts,x\nidle,1,2,3,4\n",
            {},
            "extra_feature",
            ["['ts', 'x']"],
        ),
        ("temp_c,pressure_pa\n1,2\n", {}, "no_label", ["'activity'"]),
        ("activity,temp_c,pressure_pa\nidle,1,2\nrunning,1,2\n", {}, "unknown_class", [":3:"]),
        ("activity,temp_c,pressure_pa\n,1,2\n", {}, "bad_value", [":2:", "empty"]),
        ("activity,temp_c,pressure_pa\nidle,1,hot\n", {}, "bad_value", [":2:", "'hot'"]),
        ("activity,temp_c,pressure_pa\nidle,1,nan\n", {}, "not_finite", [":2:"]),
        ("activity,temp_c,pressure_pa\n", {}, "no_rows", []),
        ("activity,temp_c,pressure_pa\nidle,1\n", {}, "ragged", [":2:"]),
        ("1,2,3\n1,2,3\n", {}, "no_header", ["name the columns"]),
        ("activity,,pressure_pa\nidle,1,2\n", {}, "bad_header", ["[2]"]),
        ("activity,temp_c,temp_c\nidle,1,2\n", {}, "bad_header", ["temp_c"]),
        ("activity,temp_c,pressure_pa\nidle,1,2\n", {"label": "y"}, "wrong_label", ["'y'"]),
        ("activity,temp_c,pressure_pa\nidle,1,2\n", {"task": "regression"}, "wrong_task", []),
    ],
)
def test_data_that_does_not_fit_the_schema_is_one_clear_error(
    tmp_path, text, kwargs, reason, fragments
):
    path = write(tmp_path, "dev.csv", text)
    err = error(load_csv, path, schema=SENSOR, **kwargs)
    assert err.reason == reason
    assert str(path) in str(err)
    for fragment in fragments:
        assert fragment in str(err)


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "reason"),
    [
        (np.ones((2, 1)), np.array([0, 1]), {}, "missing_feature"),
        (np.ones((2, 3)), np.array([0, 1]), {}, "extra_feature"),
        (np.ones((2, 2)), np.array([0, 2]), {}, "unknown_class"),
        (np.ones((2, 2)), np.array([0, 1]), {"task": "regression"}, "wrong_task"),
    ],
)
def test_an_npz_is_checked_against_the_schema_by_count(tmp_path, x, y, kwargs, reason):
    save_npz(tmp_path / "d.npz", Dataset(x, y))
    assert error(load_dataset, tmp_path / "d.npz", schema=SENSOR, **kwargs).reason == reason


def test_an_npz_that_fits_the_schema_loads(tmp_path):
    save_npz(tmp_path / "d.npz", Dataset(np.ones((2, 2)), np.array([1, 0])))
    assert load_dataset(tmp_path / "d.npz", schema=SENSOR).y.tolist() == [1, 0]


def test_read_table_keeps_text_and_lines(tmp_path):
    table = read_table(write(tmp_path, "t.csv", "a,b\n\n1, x \n2,\n"))
    assert table.header == ["a", "b"] and table.rows == [["1", "x"], ["2", ""]]
    assert table.lines == [3, 4] and table.where(1).endswith("t.csv:4")


def test_describe_reports_types_ranges_missing_and_classes(tmp_path):
    table = read_table(write(tmp_path, "t.csv", "t,kind,n\n3.5,b,\n-1,a,2\n1e3,b,x\n"))
    info = describe(table, "kind")
    assert info["rows"] == 3
    assert info["columns"] == [
        {"name": "t", "type": "number", "min": -1.0, "max": 1000.0, "missing": 0},
        {"name": "kind", "type": "text", "missing": 0},
        {"name": "n", "type": "text", "missing": 1},
    ]
    assert info["task"] == "classification" and info["classes"] == {"a": 1, "b": 2}
    assert describe(table, "t")["task"] == "regression"
    assert error(describe, table, "zz").reason == "no_label"


names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8).filter(
    lambda s: s.isprintable() and s.strip() == s and not _is_number(s)
)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


@settings(max_examples=60, deadline=None)
@given(
    columns=st.lists(names, min_size=3, max_size=6, unique=True),
    classes=st.lists(names, min_size=2, max_size=4, unique=True),
    data=st.data(),
)
def test_random_tables_with_string_labels_round_trip_through_their_schema(columns, classes, data):
    label, features = columns[0], columns[1:]
    n = data.draw(st.integers(2, 12))
    x = data.draw(hnp.arrays(np.float32, (n, len(features)), elements=finite_f32))
    y = data.draw(st.lists(st.integers(0, len(classes) - 1), min_size=n, max_size=n))
    y[:2] = [0, 1]  # at least two classes present
    order = data.draw(st.permutations(columns))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(order)
            for xrow, cls in zip(x.tolist(), y, strict=True):
                cells = {label: classes[cls], **dict(zip(features, xrow, strict=True))}
                writer.writerow([cells[c] if c == label else f"{cells[c]:.9g}" for c in order])
        schema = Schema.from_csv(path, label)
        assert set(schema.features) == set(features) and schema.label == label
        ds = load_csv(path, schema=schema)
    cols = [features.index(f) for f in schema.features]
    np.testing.assert_array_equal(ds.x, x[:, cols])
    assert [schema.classes[i] for i in ds.y] == [classes[i] for i in y]  # type: ignore[index]


@settings(max_examples=200, deadline=None)
@given(
    blob=st.one_of(
        st.binary(max_size=300),
        st.text(alphabet=st.sampled_from('ab,1.5-e"\n\r\x00 \t;nan'), max_size=300).map(str.encode),
    )
)
def test_random_bytes_never_crash_the_schema_reader_or_loader(blob):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.csv"
        path.write_bytes(blob)
        for read in (
            lambda: Schema.from_csv(path, "a"),
            lambda: load_csv(path, schema=SENSOR),
            lambda: load_csv(path, schema=Schema(("a",), "b", "regression")),
            lambda: describe(read_table(path), "a"),
            lambda: load_csv(path),
        ):
            with contextlib.suppress(DataError):
                read()


@pytest.mark.parametrize(
    ("ds", "kwargs", "reason"),
    [
        (Dataset(np.ones((2, 3)), np.array([0, 1])), {}, "extra_feature"),
        (Dataset(np.ones((2, 2)), np.array([0, 3])), {}, "unknown_class"),
        (Dataset(np.ones((2, 2)), np.array([0.5, 1])), {}, "wrong_task"),
        (Dataset(np.ones((2, 2)), np.ones((2, 2))), {"task": "regression"}, "wrong_outputs"),
    ],
)
def test_check_fits_names_what_a_model_cannot_learn_from(ds, kwargs, reason):
    args = {"features": 2, "task": "classification", "outputs": 3, "where": "eval.csv", **kwargs}
    err = error(check_fits, ds, **args)
    assert err.reason == reason and str(err).startswith("eval.csv: ")
    ok = Dataset(np.ones((2, 2)), np.array([0, 2]))
    assert check_fits(ok, features=2, task="classify", outputs=3, where="x") is ok
