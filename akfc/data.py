"""Data tables: reading CSV/Parquet, binding columns to graph inputs, checking labels.

A source's graph input reads the data column of the same name unless the
spec binds it to another column, or to an ordered list of columns for a
packed input (one float tensor [batch, F] whose columns are features in a
fixed order). Values are checked before anything runs: a missing column, a
type that cannot be converted without loss, NaN or infinity, and labels that
do not fit the task's kind are errors that name the file, the column and the
first offending row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from akfc.errors import DataError

__all__ = ["InputSignature", "bind_input", "check_id_range", "check_same_columns", "read_table", "task_labels"]

logger = logging.getLogger(__name__)

_MAX_ROWS_SHOWN = 5


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
        raise DataError(f"data file {file}: column {column!r} has {chunked.null_count} empty values ({_rows(nulls)}); fill or drop them")
    return chunked.to_numpy(zero_copy_only=False)


def _convert(values: np.ndarray, dtype: np.dtype, column: str, file: str) -> np.ndarray:
    """Cast a column to the input's dtype when no value changes; otherwise raise naming the row."""
    if values.dtype == dtype:
        converted = values
    elif dtype.kind in "iuf" and values.dtype.kind in "OUS":
        numeric = np.array([_try_float(v) for v in values], dtype=np.float64)
        bad = np.isnan(numeric) & ~np.array([_is_nan_text(v) for v in values])
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(f"data file {file}: column {column!r} contains text where numbers are expected, e.g. {values[first]!r} at row {first}")
        values = numeric
        converted = values.astype(dtype)
    elif dtype.kind in "OUS":
        converted = values.astype(str).astype(object)
    else:
        converted = values.astype(dtype)
    if dtype.kind in "iu" and values.dtype.kind == "f":
        lossy = ~np.isfinite(values) | (values != converted)
        if lossy.any():
            first = int(np.flatnonzero(lossy)[0])
            raise DataError(
                f"data file {file}: column {column!r} has non-integer value {values[first].item()!r} at row {first} "
                f"but the graph input needs {dtype}; fix the column or the model's input type"
            )
    if dtype.kind in "iu" and values.dtype.kind in "iu" and not np.array_equal(converted, values):
        lossy = converted != values
        raise DataError(f"data file {file}: column {column!r} has values out of range for {dtype} ({_rows(lossy)})")
    if converted.dtype.kind == "f":
        bad = ~np.isfinite(converted)
        if bad.any():
            raise DataError(
                f"data file {file}: column {column!r} has {int(bad.sum())} NaN or infinite values ({_rows(bad)}); "
                "clean or impute them before fusing or serving"
            )
    return converted


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


def task_labels(table: pa.Table, column: str, kind: str, file: str, classes: int | None = None) -> np.ndarray:
    """Read and check a task's label column: int64 class ids for classification, float32 for regression."""
    values = _column(table, column, file)
    if kind == "regression":
        return _convert(values, np.dtype(np.float32), column, file)
    labels = _convert(values, np.dtype(np.int64), column, file)
    if kind == "binary":
        bad = (labels != 0) & (labels != 1)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"data file {file}: label column {column!r} of a binary task must hold 0 or 1, "
                f"found {labels[first]} at row {first} ({_rows(bad)})"
            )
    elif classes is not None:
        bad = (labels < 0) | (labels >= classes)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"data file {file}: label column {column!r} of a {classes}-class task must hold 0..{classes - 1}, "
                f"found {labels[first]} at row {first} ({_rows(bad)})"
            )
    return labels


def check_same_columns(tables: Mapping[str, pa.Table]) -> None:
    """Raise when the tables (file -> table) do not share the columns the first one has."""
    items = list(tables.items())
    first_file, first = items[0]
    for file, table in items[1:]:
        missing = sorted(set(first.column_names) - set(table.column_names))
        if missing:
            raise DataError(f"data file {file} lacks columns that {first_file} has: {', '.join(missing)}")


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
