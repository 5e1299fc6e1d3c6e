"""Data tables: reading CSV/Parquet, binding columns to graph inputs, checking labels.

A source's graph input reads the data column of the same name unless the
spec binds it to another column, or to an ordered list of columns for a
packed input (one float tensor [batch, F] whose columns are features in a
fixed order). Values are checked before anything runs: a missing column, a
type that cannot be converted without loss, NaN or infinity, and labels that
do not fit the task's kind are errors that name the file, the column and the
first offending row.

With `--fill`, missing feature values (empty, NaN or infinite) are imputed
instead: a float column gets its mean over the train split, and a column of
embedding ids gets the unknown id 0. The same values are applied to every
split and stored in the fused graph, so `akfc run` and `akfc eval` impute
them too. Labels are never imputed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from akfc.errors import DataError

__all__ = [
    "UNKNOWN_ID",
    "InputSignature",
    "bind_input",
    "check_id_range",
    "check_label_classes",
    "check_same_columns",
    "fill_missing",
    "fill_values",
    "read_table",
    "task_labels",
]

logger = logging.getLogger(__name__)

_MAX_ROWS_SHOWN = 5
# The id that `--fill` gives a missing embedding id and the fused graph's id guard gives an out-of-range one.
# akfc's Adult data reserves it for unknown values. A source that uses 0 for a real category should not be fused
# with either option.
UNKNOWN_ID = 0
_FILL_HINT = (
    "clean or impute them, or compile with --fill to impute the train split's column mean "
    "(akfc run and eval then impute the same values)"
)


@dataclass(frozen=True)
class InputSignature:
    """A graph input as the data must feed it."""

    name: str
    dtype: np.dtype  # numpy dtype of the ONNX element type
    shape: tuple[int | str | None, ...]  # ONNX shape; dim 0 is the batch axis


def read_table(path: str | os.PathLike[str]) -> pa.Table:
    """Read a CSV or Parquet file (by extension) into an Arrow table."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} not found")
    suffixes = "".join(path.suffixes[-2:]).lower()
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            table = pq.read_table(path)
        elif suffixes.endswith((".csv", ".csv.gz", ".tsv")):
            options = pa_csv.ParseOptions(delimiter="\t") if ".tsv" in suffixes else None
            table = pa_csv.read_csv(path, parse_options=options)
        else:
            raise DataError(f"data file {path}: unknown format {path.suffix!r}; use .parquet, .csv or .csv.gz")
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"data file {path} could not be read: {error}") from None
    if table.num_rows == 0:
        raise DataError(f"data file {path} has no rows")
    return table


def _rows(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask)
    shown = ", ".join(str(r) for r in rows[:_MAX_ROWS_SHOWN])
    more = f" and {len(rows) - _MAX_ROWS_SHOWN} more" if len(rows) > _MAX_ROWS_SHOWN else ""
    return f"row {shown}{more}" if len(rows) == 1 else f"rows {shown}{more}"


def _column(table: pa.Table, column: str, file: str) -> np.ndarray:
    if column not in table.column_names:
        raise DataError(
            f"data file {file}: column {column!r} is missing (columns: {', '.join(table.column_names)}); "
            "add it, or bind the graph input to another column with `inputs` in the spec"
        )
    chunked = table.column(column)
    if chunked.null_count:
        nulls = np.asarray(chunked.is_null().to_numpy(zero_copy_only=False))
        raise DataError(f"data file {file}: column {column!r} has {chunked.null_count} empty values ({_rows(nulls)}); {_FILL_HINT}")
    return chunked.to_numpy(zero_copy_only=False)


def _convert(values: np.ndarray, dtype: np.dtype, column: str, file: str) -> np.ndarray:
    """Cast a column to the input's dtype when no value changes; otherwise raise naming the row."""
    if dtype.kind in "iuf" and values.dtype.kind in "OUS":
        numeric = np.array([_try_float(v) for v in values], dtype=np.float64)
        bad = np.isnan(numeric) & ~np.array([_is_nan_text(v) for v in values])
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(f"data file {file}: column {column!r} contains text where numbers are expected, e.g. {values[first]!r} at row {first}")
        values = numeric
    # Checked before the cast: numpy casts NaN to an arbitrary integer, with only a RuntimeWarning.
    if dtype.kind in "iuf" and values.dtype.kind == "f":
        _check_finite(values, column, file)
    if values.dtype == dtype:
        converted = values
    elif dtype.kind in "OUS":
        converted = values.astype(str).astype(object)
    else:
        converted = values.astype(dtype)
    if dtype.kind in "iu" and values.dtype.kind == "f" and (values != converted).any():
        first = int(np.flatnonzero(values != converted)[0])
        raise DataError(
            f"data file {file}: column {column!r} has non-integer value {values[first].item()!r} at row {first} "
            f"but the graph input needs {dtype}; fix the column or the model's input type"
        )
    if dtype.kind in "iu" and values.dtype.kind in "iu" and not np.array_equal(converted, values):
        lossy = converted != values
        raise DataError(f"data file {file}: column {column!r} has values out of range for {dtype} ({_rows(lossy)})")
    if converted.dtype.kind == "f":
        # A float64 value beyond float32's range becomes infinite in the cast.
        _check_finite(converted, column, file)
    return converted


def _check_finite(values: np.ndarray, column: str, file: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        raise DataError(f"data file {file}: column {column!r} has {int(bad.sum())} NaN or infinite values ({_rows(bad)}); {_FILL_HINT}")


def _try_float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]  -- any text; failures become NaN and are reported
    except (TypeError, ValueError):
        return float("nan")


def _is_nan_text(value: object) -> bool:
    return isinstance(value, str) and value.strip().lower() == "nan"


def _is_text(arrow_type: pa.DataType) -> bool:
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)


def bind_input(table: pa.Table, signature: InputSignature, columns: str | Sequence[str], file: str) -> np.ndarray:
    """Build the array that feeds one graph input from its bound column(s).

    Arguments:
        table: the data.
        signature: the graph input's name, dtype and shape.
        columns: one column, or an ordered list for a packed input [batch, F].
        file: the table's file name, for error messages.

    Returns:
        An array of the input's dtype: [N] or [N, 1] for one column (following
        the input's rank), [N, F] for a packed input.
    """
    rank = len(signature.shape)
    if isinstance(columns, str):
        if signature.dtype.kind in "OUS" and columns in table.column_names and not _is_text(table.schema.field(columns).type):
            # Numbers turned into text would reach a string encoder as unknown categories, silently.
            raise DataError(
                f"data file {file}: graph input {signature.name!r} reads text but column {columns!r} contains "
                f"{table.schema.field(columns).type} values; bind the input to a text column with "
                f"inputs = {{ {signature.name} = \"COLUMN\" }} in the spec"
            )
        values = _convert(_column(table, columns, file), signature.dtype, columns, file)
        if rank == 1:
            return values
        if rank == 2 and (signature.shape[1] in (1, None) or isinstance(signature.shape[1], str)):
            return values.reshape(-1, 1)
        raise DataError(
            f"graph input {signature.name!r} has shape {list(signature.shape)}, which one column {columns!r} cannot feed; "
            "bind it to an ordered list of columns in the spec (inputs = { name = [\"a\", \"b\", ...] })"
        )
    width = signature.shape[1] if rank == 2 else None
    if rank != 2 or (isinstance(width, int) and width != len(columns)):
        raise DataError(
            f"graph input {signature.name!r} has shape {list(signature.shape)} but is bound to {len(columns)} columns; "
            f"a packed input needs shape [batch, {len(columns)}]"
        )
    return np.stack([_convert(_column(table, c, file), signature.dtype, c, file) for c in columns], axis=1)


def task_labels(table: pa.Table, column: str, kind: str, file: str, classes: int | None = None, *, task: str | None = None) -> np.ndarray:
    """Read and check a task's label column: int64 class ids for classification, float32 for regression.

    `task` names the task in the messages and defaults to the column. Labels
    are never imputed, so an empty, NaN or infinite label is an error.
    """
    task = task or column
    owner = f"{classes}-class task {task!r}" if kind == "multiclass" and classes else f"{kind} task {task!r}"
    values = _label_values(table, column, file, task, owner)
    if kind == "regression":
        return _convert(values, np.dtype(np.float32), column, file)
    if values.dtype.kind == "f":
        fractional = values != np.round(values)
        if fractional.any():
            first = int(np.flatnonzero(fractional)[0])
            raise DataError(
                f"data file {file}: label column {column!r} of {owner} has non-integer value {values[first].item()!r} "
                f"at row {first}; class labels must be integer class ids"
            )
    labels = _convert(values, np.dtype(np.int64), column, file)
    if kind == "binary":
        bad = (labels != 0) & (labels != 1)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"data file {file}: label column {column!r} of {owner} must hold 0 or 1, "
                f"found {labels[first]} at row {first} ({_rows(bad)})"
            )
    elif classes is not None:
        bad = (labels < 0) | (labels >= classes)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"data file {file}: label column {column!r} of {owner} must hold 0..{classes - 1}, "
                f"found {labels[first]} at row {first} ({_rows(bad)})"
            )
    return labels


def _label_values(table: pa.Table, column: str, file: str, task: str, owner: str) -> np.ndarray:
    """Return a label column's values, or raise when it is missing or has empty, NaN or infinite values."""
    if column not in table.column_names:
        raise DataError(
            f"data file {file}: label column {column!r} of {owner} is missing (columns: {', '.join(table.column_names)}); "
            f"add it, or name the task's label column with --label {task}=COLUMN "
            f"(label = \"COLUMN\" under [task.{task}] in a spec)"
        )
    chunked = table.column(column)
    missing = np.asarray(chunked.is_null().to_numpy(zero_copy_only=False))
    values = chunked.to_numpy(zero_copy_only=False)
    if values.dtype.kind == "f":
        # An integer column with empty values arrives as float64 with NaN in their place.
        missing = missing | ~np.isfinite(values)
    if missing.any():
        raise DataError(
            f"data file {file}: label column {column!r} of {owner} has {int(missing.sum())} empty, NaN or infinite values "
            f"({_rows(missing)}); labels are never imputed, not even with --fill, so drop these rows"
        )
    return values


def check_label_classes(labels: np.ndarray, column: str, kind: str, file: str, classes: int | None = None, *, task: str | None = None) -> None:
    """Raise when a classification task's labels lack a class, so that its AUC on this table is undefined.

    Validation and test tables need rows of every class: of 0 and 1 for a
    binary task, of 0..classes-1 for a multiclass one (of two classes at
    least when `classes` is not given). Regression labels pass.
    """
    if kind == "regression" or not len(labels):
        return
    task = task or column
    present = np.unique(labels)
    expected = 2 if kind == "binary" else classes
    if expected is None:
        if len(present) > 1:
            return
        expected = 2
    absent = sorted(set(range(expected)) - {int(v) for v in present})
    if not absent and len(present) > 1:
        return
    owner = f"{expected}-class task {task!r}" if kind == "multiclass" else f"{kind} task {task!r}"
    if len(present) == 1:
        found = f"holds only the value {present[0].item()} ({len(labels)} rows)"
    else:
        found = f"has no rows of class {', '.join(str(c) for c in absent)}"
    needed = "both classes 0 and 1" if expected == 2 else f"every class 0..{expected - 1}"
    raise DataError(
        f"data file {file}: label column {column!r} of {owner} {found}, so the task's AUC is undefined on it; "
        f"validation and test tables need rows of {needed} (use more rows or a stratified split)"
    )


def check_same_columns(tables: Mapping[str, pa.Table], columns: Collection[str] | None = None) -> None:
    """Raise when a table (file -> table) lacks one of `columns` that the first table has (all of its columns when None)."""
    items = list(tables.items())
    first_file, first = items[0]
    needed = set(first.column_names) if columns is None else set(columns) & set(first.column_names)
    for file, table in items[1:]:
        missing = sorted(needed - set(table.column_names))
        if missing:
            description = "columns that" if columns is None else "columns that the sources or labels read and that"
            raise DataError(
                f"data file {file} lacks {description} {first_file} has: {', '.join(missing)}; give every split the same columns"
            )


def fill_values(table: pa.Table, float_columns: Iterable[str], id_columns: Iterable[str], file: str) -> dict[str, float | int]:
    """Return what `--fill` imputes per column: the mean of a float column over `table` (the train split), UNKNOWN_ID for an id column.

    Columns that `table` lacks or that hold text are left out, so their
    binding reports them as usual. Raises when a float column has no finite
    value to average.
    """
    values: dict[str, float | int] = {}
    for column in float_columns:
        if column not in table.column_names:
            continue
        numbers = _numbers(table.column(column))
        if numbers is None:
            continue
        finite = numbers[np.isfinite(numbers)]
        if not finite.size:
            raise DataError(
                f"data file {file}: column {column!r} has no finite value, so --fill has no train mean to impute; "
                "fill the column, or drop it from the sources' inputs"
            )
        values[column] = float(finite.mean())
    for column in id_columns:
        if column in table.column_names:
            values[column] = UNKNOWN_ID
    return values


def fill_missing(table: pa.Table, values: Mapping[str, float | int], file: str) -> tuple[pa.Table, dict[str, int]]:
    """Replace the empty, NaN and infinite values of each column in `values` by its fill value.

    Returns the new table and, per column that had any, the number of values
    imputed; each such column is also logged as a warning. Integer columns
    keep their type unless a non-integer mean is imputed, which makes them
    float64. Columns the table lacks, and text columns, are left as they are.
    """
    counts: dict[str, int] = {}
    for column, value in values.items():
        if column not in table.column_names:
            continue
        chunked = table.column(column)
        filled, count = _fill_column(chunked, value)
        if not count:
            continue
        table = table.set_column(table.column_names.index(column), column, filled)
        counts[column] = count
        logger.warning("data file %s: --fill imputed %d missing values of column %r with %s", file, count, column, value)
    return table, counts


def _numbers(chunked: pa.ChunkedArray) -> np.ndarray | None:
    """Return a numeric column as float64 with NaN for empty values, or None for any other type."""
    if not (pa.types.is_integer(chunked.type) or pa.types.is_floating(chunked.type)):
        return None
    return np.asarray(chunked.to_numpy(zero_copy_only=False), dtype=np.float64)


def _fill_column(chunked: pa.ChunkedArray, value: float | int) -> tuple[pa.ChunkedArray | pa.Array, int]:
    if pa.types.is_integer(chunked.type):
        # Integers have no NaN or infinity, only empty values. Converting through float64 would round ids above 2**53.
        if not chunked.null_count:
            return chunked, 0
        if float(value).is_integer():
            return pc.fill_null(chunked, pa.scalar(int(value), chunked.type)), chunked.null_count
        return pc.fill_null(chunked.cast(pa.float64()), float(value)), chunked.null_count
    if pa.types.is_floating(chunked.type):
        numbers = chunked.to_numpy(zero_copy_only=False)
        missing = ~np.isfinite(numbers)
        count = int(missing.sum())
        if not count:
            return chunked, 0
        return pa.array(np.where(missing, value, numbers).astype(numbers.dtype), type=chunked.type), count
    return chunked, 0


def check_id_range(values: np.ndarray, limit: int, column: str | Sequence[str], input_name: str, file: str) -> None:
    """Raise unless every id is in [0, limit), the rows of the embedding table that graph input `input_name` indexes.

    Out-of-range ids must not reach onnxruntime: it rejects them on CPU, and
    on CUDA it may return garbage for them without an error.
    """
    bad = (values < 0) | (values >= limit)
    if not bad.any():
        return
    rows = bad.reshape(len(values), -1).any(axis=1)
    first = int(np.flatnonzero(rows)[0])
    value = values[first].reshape(-1)[bad[first].reshape(-1)][0].item()
    raise DataError(
        f"data file {file}: column {column!r} has ids outside 0..{limit - 1}, e.g. {value} at row {first} ({_rows(rows)}); "
        f"graph input {input_name!r} indexes an embedding table of {limit} rows. Encode unseen values as the "
        "unknown id the model was trained with (0 in akfc's Adult data) before fusing or serving"
    )
