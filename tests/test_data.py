"""Binding data columns to graph inputs and checking labels: values and the errors a user sees."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from akfc.data import (
    InputSignature,
    bind_input,
    check_label_classes,
    check_same_columns,
    fill_missing,
    fill_values,
    read_table,
    task_labels,
)
from akfc.errors import DataError


def _table(**columns):
    return pa.table({name: pa.array(values) for name, values in columns.items()})


def test_one_column_feeds_rank_1_and_rank_2():
    table = _table(age=[1.5, 2.5])
    flat = bind_input(table, InputSignature("age", np.dtype(np.float32), ("batch",)), "age", "t.csv")
    column = bind_input(table, InputSignature("age", np.dtype(np.float32), ("batch", 1)), "age", "t.csv")
    assert flat.dtype == np.float32
    assert flat.shape == (2,)
    assert column.shape == (2, 1)


def test_packed_input_stacks_columns_in_order():
    table = _table(a=[1.0, 2.0], b=[3.0, 4.0])
    packed = bind_input(table, InputSignature("x", np.dtype(np.float32), ("N", 2)), ["b", "a"], "t.csv")
    np.testing.assert_array_equal(packed, [[3.0, 1.0], [4.0, 2.0]])


def test_int32_ids_cast_losslessly():
    table = _table(job=[1, 2, 3])
    ids = bind_input(table, InputSignature("job", np.dtype(np.int32), ("N",)), "job", "t.csv")
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [1, 2, 3])


def test_missing_column_named():
    with pytest.raises(DataError, match=r"data file t.csv: column 'age' is missing \(columns: job\)"):
        bind_input(_table(job=[1]), InputSignature("age", np.dtype(np.float32), ("N",)), "age", "t.csv")


def test_text_in_numeric_column_names_row():
    table = _table(age=["31", "old", "40"])
    with pytest.raises(DataError, match=r"column 'age' contains text where numbers are expected, e.g. 'old' at row 1"):
        bind_input(table, InputSignature("age", np.dtype(np.float32), ("N",)), "age", "t.csv")


def test_nan_refused_with_rows():
    table = _table(age=[1.0, float("nan"), float("inf")])
    with pytest.raises(DataError, match=r"column 'age' has 2 NaN or infinite values \(rows 1, 2\); clean or impute them, or compile with --fill"):
        bind_input(table, InputSignature("age", np.dtype(np.float32), ("N",)), "age", "t.csv")


def test_empty_values_mention_fill():
    table = pa.table({"age": pa.array([1.0, None], pa.float32())})
    with pytest.raises(DataError, match=r"column 'age' has 1 empty values \(row 1\); clean or impute them, or compile with --fill"):
        bind_input(table, InputSignature("age", np.dtype(np.float32), ("N",)), "age", "t.csv")


def test_nan_id_rejected_without_warning():
    table = _table(job=[1.0, float("nan")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match=r"column 'job' has 1 NaN or infinite values \(row 1\)"):
            bind_input(table, InputSignature("job", np.dtype(np.int64), ("N",)), "job", "t.csv")


def test_fractional_id_refused():
    table = _table(job=[1.0, 2.5])
    with pytest.raises(DataError, match=r"column 'job' has non-integer value 2.5 at row 1"):
        bind_input(table, InputSignature("job", np.dtype(np.int64), ("N",)), "job", "t.csv")


def test_packed_width_mismatch():
    with pytest.raises(DataError, match=r"graph input 'x' has shape \['N', 3\] but is bound to 2 columns"):
        bind_input(_table(a=[1.0], b=[2.0]), InputSignature("x", np.dtype(np.float32), ("N", 3)), ["a", "b"], "t.csv")


def test_binary_label_outside_0_1():
    with pytest.raises(DataError, match=r"label column 'click' of binary task 'ctr' must hold 0 or 1, found 2 at row 2"):
        task_labels(_table(click=[0, 1, 2]), "click", "binary", "t.csv", task="ctr")


def test_multiclass_label_range():
    labels = task_labels(_table(y=[0, 2, 1]), "y", "multiclass", "t.csv", classes=3)
    assert labels.dtype == np.int64
    with pytest.raises(DataError, match=r"label column 'y' of 3-class task 'y' must hold 0..2, found 3 at row 0"):
        task_labels(_table(y=[3, 0]), "y", "multiclass", "t.csv", classes=3)


def test_missing_label_column_named():
    message = (
        r"data file t.csv: label column 'salary' of binary task 'income' is missing \(columns: age, income\); "
        r"add it, or name the task's label column with --label income=COLUMN \(label = \"COLUMN\" under \[task.income\] in a spec\)"
    )
    with pytest.raises(DataError, match=message):
        task_labels(_table(age=[1.0], income=[0]), "salary", "binary", "t.csv", task="income")


@pytest.mark.parametrize(
    ("values", "kind", "rows"),
    [
        ([0.0, float("nan"), 1.0], "binary", r"1 empty, NaN or infinite values \(row 1\)"),
        ([0.5, float("inf"), float("nan")], "regression", r"2 empty, NaN or infinite values \(rows 1, 2\)"),
        ([0, None, None], "binary", r"2 empty, NaN or infinite values \(rows 1, 2\)"),
    ],
)
def test_missing_label_values_rejected(values, kind, rows):
    table = _table(income=values)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match=rf"label column 'income' of {kind} task 'income' has {rows}; labels are never imputed, not even with --fill, so drop these rows"):
            task_labels(table, "income", kind, "t.csv", task="income")


def test_fractional_class_label():
    with pytest.raises(DataError, match=r"label column 'y' of binary task 'y' has non-integer value 0.5 at row 1; class labels must be integer class ids"):
        task_labels(_table(y=[1.0, 0.5]), "y", "binary", "t.csv")


def test_single_label_value_rejected():
    message = (
        r"data file v.csv: label column 'click' of binary task 'ctr' holds only the value 0 \(3 rows\), so the task's AUC is "
        r"undefined on it; validation and test tables need rows of both classes 0 and 1 \(use more rows or a stratified split\)"
    )
    with pytest.raises(DataError, match=message):
        check_label_classes(np.array([0, 0, 0]), "click", "binary", "v.csv", task="ctr")


def test_missing_class_rejected():
    with pytest.raises(DataError, match=r"label column 'y' of 3-class task 'y' has no rows of class 1, so the task's AUC is undefined on it; "
                                         r"validation and test tables need rows of every class 0..2"):
        check_label_classes(np.array([0, 2, 2]), "y", "multiclass", "v.csv", classes=3)


def test_label_classes_pass():
    check_label_classes(np.array([0, 1, 1]), "y", "binary", "v.csv")
    check_label_classes(np.array([2, 0, 1]), "y", "multiclass", "v.csv", classes=3)
    check_label_classes(np.array([0.5, 0.5]), "y", "regression", "v.csv")


def test_same_columns_message():
    tables = {"train.csv": _table(age=[1.0], job=[1], note=["x"]), "valid.csv": _table(job=[1])}
    with pytest.raises(DataError, match=r"data file valid.csv lacks columns that train.csv has: age, note; give every split the same columns"):
        check_same_columns(tables)
    with pytest.raises(DataError, match=r"data file valid.csv lacks columns that the sources or labels read and that train.csv has: age;"):
        check_same_columns(tables, ["age", "job"])
    check_same_columns(tables, ["job"])


def test_fill_values_use_train_mean():
    train = _table(age=[1.0, 3.0, float("nan")], hours=[10, None, 20], job=[1, 2, 3], name=["a", "b", "c"])
    values = fill_values(train, ["age", "hours", "name", "absent"], ["job"], "train.csv")
    assert values == {"age": 2.0, "hours": 15.0, "job": 0}


def test_fill_values_need_a_finite_value():
    with pytest.raises(DataError, match=r"data file train.csv: column 'age' has no finite value, so --fill has no train mean to impute"):
        fill_values(_table(age=[float("nan"), float("inf")]), ["age"], [], "train.csv")


def test_fill_missing_counts_and_types():
    table = pa.table({
        "age": pa.array([1.0, None, float("nan"), float("-inf")], pa.float32()),
        "hours": pa.array([1, None, 3, 4], pa.int64()),
        "job": pa.array([4, None, None, 2], pa.int64()),
        "income": pa.array([0.0, float("nan"), 1.0, 0.0]),
    })  # fmt: skip
    filled, counts = fill_missing(table, {"age": 2.5, "hours": 0.5, "job": 0}, "valid.csv")
    assert counts == {"age": 3, "hours": 1, "job": 2}
    assert filled.column("age").type == pa.float32()
    assert filled.column("age").to_pylist() == [1.0, 2.5, 2.5, 2.5]
    assert filled.column("hours").type == pa.float64()
    assert filled.column("hours").to_pylist() == [1.0, 0.5, 3.0, 4.0]
    assert filled.column("job").type == pa.int64()
    assert filled.column("job").to_pylist() == [4, 0, 0, 2]
    assert np.isnan(filled.column("income").to_numpy()[1])


def test_fill_missing_logs_each_column(caplog):
    with caplog.at_level("WARNING", logger="akfc.data"):
        fill_missing(_table(age=[1.0, float("nan")], job=[1, 2]), {"age": 1.0, "job": 0}, "valid.csv")
    assert caplog.messages == ["data file valid.csv: --fill imputed 1 missing values of column 'age' with 1.0"]


def test_read_table_formats_and_errors(tmp_path):
    pq.write_table(_table(a=[1, 2]), tmp_path / "t.parquet")
    (tmp_path / "t.csv").write_text("a,b\n1,x\n")
    (tmp_path / "empty.csv").write_text("a,b\n")
    assert read_table(tmp_path / "t.parquet").num_rows == 2
    assert read_table(tmp_path / "t.csv").column_names == ["a", "b"]
    with pytest.raises(DataError, match=r"empty.csv has no rows"):
        read_table(tmp_path / "empty.csv")
    with pytest.raises(DataError, match=r"nope.parquet not found"):
        read_table(tmp_path / "nope.parquet")
    with pytest.raises(DataError, match=r"unknown format '.xlsx'"):
        (tmp_path / "t.xlsx").write_text("")
        read_table(tmp_path / "t.xlsx")
