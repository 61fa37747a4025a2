"""fedmq.schema: inference from a table, class order, label mapping, and strict files."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedmq.errors import DataError
from fedmq.schema import Schema, order_classes

HEADER = ["temp_c", "label", "pressure_pa"]


def test_string_labels_make_a_classification_with_classes_by_name() -> None:
    rows = [["20.5", "walking", "101325"], ["19", "idle", "101000"], ["21", "running", "99000"]]
    s = Schema.infer(HEADER, rows, "label")
    assert s.task == "classification"
    assert s.features == ("temp_c", "pressure_pa")  # file order, the label left out
    assert s.classes == ("idle", "running", "walking")
    assert s.encode_label("running", "x.csv:3") == 1


def test_integer_labels_are_ordered_by_value_and_match_as_numbers() -> None:
    rows = [["1", "10", "2"], ["1", "2", "2"], ["1", "0", "2"]]
    s = Schema.infer(HEADER, rows, "label")
    assert s.classes == ("0", "2", "10")
    assert s.encode_label("10.0", "here") == 2


def test_real_labels_make_a_regression_and_the_task_can_be_forced() -> None:
    rows = [["1", "0.5", "2"], ["1", "1.25", "2"]]
    assert Schema.infer(HEADER, rows, "label").task == "regression"
    forced = Schema.infer(HEADER, [["1", "1", "2"], ["1", "3", "2"]], "label", task="regression")
    assert forced.task == "regression" and forced.classes is None


def test_an_unknown_class_is_a_data_error_naming_the_place() -> None:
    s = Schema(("a",), "y", "classification", ("cat", "dog"))
    with pytest.raises(DataError, match=r"dev\.csv:7.*'cow'") as info:
        s.encode_label("cow", "dev.csv:7")
    assert info.value.reason == "unknown_class"


@pytest.mark.parametrize(
    "rows,label,reason",
    [
        ([["1", "a", "x"]], "label", "bad_value"),  # a text feature
        ([["1", "a", "2"]], "missing", "no_label"),
        ([["1", "", "2"]], "label", "no_label"),
    ],
)
def test_tables_a_schema_cannot_describe(rows, label, reason) -> None:
    with pytest.raises(DataError) as info:
        Schema.infer(HEADER, rows, label)
    assert info.value.reason == reason


def test_regression_on_text_labels_is_refused() -> None:
    with pytest.raises(DataError, match="numeric labels"):
        Schema.infer(HEADER, [["1", "cat", "2"]], "label", task="regression")


def test_a_schema_file_round_trips(tmp_path) -> None:
    s = Schema(("a", "b"), "y", "classification", ("x", "z"))
    s.save(tmp_path / "schema.json")
    assert Schema.load(tmp_path / "schema.json") == s


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        json.dumps({"version": 2, "features": ["a"], "label": "y", "task": "regression"}),
        json.dumps({"version": 1, "features": ["a"], "label": "y", "task": "regression", "x": 1}),
        json.dumps({"version": 1, "features": ["a", "a"], "label": "y", "task": "regression"}),
        json.dumps({"version": 1, "features": ["y"], "label": "y", "task": "regression"}),
        json.dumps({"version": 1, "features": ["a"], "label": "y", "task": "classification"}),
        json.dumps({"version": 1, "features": "a", "label": "y", "task": "regression"}),
    ],
)
def test_bad_schema_files_are_one_clear_error(tmp_path, text) -> None:
    (tmp_path / "s.json").write_text(text)
    with pytest.raises(DataError) as info:
        Schema.load(tmp_path / "s.json")
    assert info.value.reason == "bad_schema"


@given(st.lists(st.integers(-1000, 1000), min_size=1, max_size=30))
def test_integer_classes_sort_numerically(values) -> None:
    assert [int(c) for c in order_classes([str(v) for v in values])] == sorted(set(values))


def test_from_csv_reads_the_header_and_names_the_file_in_errors(tmp_path) -> None:
    path = tmp_path / "dev.csv"
    path.write_text("temp_c,activity,pressure_pa\n20,walking,101325\n19,idle,\n")
    s = Schema.from_csv(path, "activity")
    assert s == Schema(("temp_c", "pressure_pa"), "activity", "classification", ("idle", "walking"))
    with pytest.raises(DataError, match=r"dev\.csv.*\['activity'\]") as info:
        Schema.from_csv(path, "temp_c")  # activity is then a text feature
    assert info.value.reason == "bad_value"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty_file"),
        ("a,y\n", "no_rows"),
        ("1,2\n3,4\n", "no_header"),
        ("a,y\n1,2,3\n", "ragged"),
        ("a,y\n1,cat\n", "one_class"),
        ("y\ncat\ndog\n", "bad_schema"),  # no feature
    ],
)
def test_from_csv_refuses_what_is_not_a_table_with_features_and_classes(
    tmp_path, text, reason
) -> None:
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(DataError) as info:
        Schema.from_csv(tmp_path / "d.csv", "y")
    assert info.value.reason == reason
    assert str(tmp_path / "d.csv") in str(info.value)


def test_from_csv_on_a_missing_file(tmp_path) -> None:
    with pytest.raises(DataError) as info:
        Schema.from_csv(tmp_path / "nope.csv", "y")
    assert info.value.reason == "no_file"
