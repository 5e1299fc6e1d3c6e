"""Binding data columns to graph inputs and checking labels: values and the errors a user sees."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from akfc.data import InputSignature, bind_input, read_table, task_labels
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
    with pytest.raises(DataError, match=r"column 'age' has 2 NaN or infinite values \(rows 1, 2\)"):
        bind_input(table, InputSignature("age", np.dtype(np.float32), ("N",)), "age", "t.csv")


def test_fractional_id_refused():
    table = _table(job=[1.0, 2.5])
    with pytest.raises(DataError, match=r"column 'job' has non-integer value 2.5 at row 1"):
        bind_input(table, InputSignature("job", np.dtype(np.int64), ("N",)), "job", "t.csv")


def test_packed_width_mismatch():
    with pytest.raises(DataError, match=r"graph input 'x' has shape \['N', 3\] but is bound to 2 columns"):
        bind_input(_table(a=[1.0], b=[2.0]), InputSignature("x", np.dtype(np.float32), ("N", 3)), ["a", "b"], "t.csv")


def test_binary_label_outside_0_1():
    with pytest.raises(DataError, match=r"label column 'click' of a binary task must hold 0 or 1, found 2 at row 2"):
        task_labels(_table(click=[0, 1, 2]), "click", "binary", "t.csv")


def test_multiclass_label_range():
    labels = task_labels(_table(y=[0, 2, 1]), "y", "multiclass", "t.csv", classes=3)
    assert labels.dtype == np.int64
    with pytest.raises(DataError, match=r"3-class task must hold 0..2, found 3 at row 0"):
        task_labels(_table(y=[3, 0]), "y", "multiclass", "t.csv", classes=3)


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
