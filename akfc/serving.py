"""Running and evaluating fused graphs (and their sources) on data tables.

A fused graph stores its tasks, sources and metrics in ONNX metadata_props (keys
below), so `akfc run` and `akfc eval` need only the graph and a table. Its
graph inputs are named after the data columns that feed them.

Metadata keys (values are strings; JSON where noted):
    akfc.schema_version  version of this key set, currently "1"
    akfc.version         akfc version that compiled the graph
    akfc.tasks           JSON: task -> {"kind", "label", "output", "classes"}
    akfc.levels          number of fused trunk levels
    akfc.fusion          JSON: fusion hyper-parameters (width, heads, ...)
    akfc.sources         JSON list: per source {"name", "task", "file", "sha256",
                         "output", "inputs"} where "inputs" maps the source's
                         graph inputs to data columns
    akfc.metrics         JSON: split -> the report's "tasks" block
    akfc.fill            JSON: column -> the value `--fill` imputes for its empty,
                         NaN and infinite values; only in graphs compiled with
                         --fill, and `predict` and `evaluate_table` apply it
    akfc.guard_ids       JSON: graph input -> embedding table rows; only in graphs
                         compiled with --guard-ids, whose guard maps ids outside
                         [0, rows) to 0. akfc still rejects such ids before
                         running the graph.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from akfc.atomic import write_atomic
from akfc.data import InputSignature, bind_input, check_id_range, check_label_classes, fill_missing, task_labels
from akfc.errors import DataError, ModelError
from akfc.metrics import task_metrics
from akfc.passes.id_ranges import embedding_limits
from akfc.runtime import make_session, run_batched

__all__ = [
    "METADATA_SCHEMA_VERSION",
    "FusedMetadata",
    "SourceRecord",
    "evaluate_table",
    "file_sha256",
    "input_signatures",
    "predict",
    "read_metadata",
    "write_predictions",
]

logger = logging.getLogger(__name__)

METADATA_SCHEMA_VERSION = "1"


@dataclass
class SourceRecord:
    """A source as the fused graph's metadata records it."""

    name: str
    task: str
    file: str
    sha256: str
    output: str  # the source's own graph output that is the task's
    inputs: dict[str, str | list[str]] = field(default_factory=dict)  # graph input -> data column(s)


@dataclass
class FusedMetadata:
    """The akfc entries of a fused graph's metadata_props, parsed."""

    tasks: dict[str, dict[str, Any]]
    sources: list[SourceRecord]
    levels: int
    version: str
    fusion: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    fill: dict[str, float | int] = field(default_factory=dict)  # column -> imputed value; empty without --fill
    guard_ids: dict[str, int] = field(default_factory=dict)  # guarded graph input -> table rows; empty without --guard-ids

    def to_props(self) -> dict[str, str]:
        props = {
            "akfc.schema_version": METADATA_SCHEMA_VERSION,
            "akfc.version": self.version,
            "akfc.tasks": json.dumps(self.tasks),
            "akfc.levels": str(self.levels),
            "akfc.fusion": json.dumps(self.fusion),
            "akfc.sources": json.dumps([vars(source) for source in self.sources]),
            "akfc.metrics": json.dumps(self.metrics),
        }
        # Written only when used, so a graph compiled without these options carries the same keys as before them.
        if self.fill:
            props["akfc.fill"] = json.dumps(self.fill)
        if self.guard_ids:
            props["akfc.guard_ids"] = json.dumps(self.guard_ids)
        return props


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_metadata(model: onnx.ModelProto, file: str) -> FusedMetadata:
    """Parse the akfc metadata of a fused graph; raise naming the file when it is not one."""
    props = {prop.key: prop.value for prop in model.metadata_props}
    version = props.get("akfc.schema_version")
    if version is None:
        raise ModelError(f"{file} is not a graph compiled by akfc (no akfc.schema_version in its metadata_props)")
    if version != METADATA_SCHEMA_VERSION:
        raise ModelError(f"{file} has akfc metadata schema {version}, this akfc reads {METADATA_SCHEMA_VERSION}; use a matching akfc version")
    return FusedMetadata(
        tasks=json.loads(props["akfc.tasks"]),
        sources=[SourceRecord(**entry) for entry in json.loads(props["akfc.sources"])],
        levels=int(props["akfc.levels"]),
        version=props["akfc.version"],
        fusion=json.loads(props.get("akfc.fusion", "{}")),
        metrics=json.loads(props.get("akfc.metrics", "{}")),
        fill=json.loads(props.get("akfc.fill", "{}")),
        guard_ids=json.loads(props.get("akfc.guard_ids", "{}")),
    )


def input_signatures(model: onnx.ModelProto) -> list[InputSignature]:
    """Return the graph inputs (initializers excluded) with numpy dtypes and shapes."""
    initializers = {init.name for init in model.graph.initializer}
    signatures = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim)
        signatures.append(InputSignature(value.name, dtype, shape))
    return signatures


def _props(model: onnx.ModelProto) -> dict[str, str]:
    return {prop.key: prop.value for prop in model.metadata_props}


def _feeds(model: onnx.ModelProto, table: pa.Table, file: str, bindings: Mapping[str, str | list[str]] | None = None) -> dict[str, np.ndarray]:
    """Bind the table to the model's inputs, refusing ids outside an embedding table before they reach onnxruntime."""
    bindings = bindings or {}
    # A guarded graph's inputs reach their tables through the guard, which embedding_limits does not follow.
    limits = {**embedding_limits(model), **json.loads(_props(model).get("akfc.guard_ids", "{}"))}
    feeds = {}
    for sig in input_signatures(model):
        column = bindings.get(sig.name, sig.name)
        feeds[sig.name] = bind_input(table, sig, column, file)
        if sig.name in limits:
            check_id_range(feeds[sig.name], limits[sig.name], column, sig.name, file)
    return feeds


def predict(
    model: onnx.ModelProto,
    table: pa.Table,
    file: str,
    outputs: Sequence[str],
    *,
    bindings: Mapping[str, str | list[str]] | None = None,
    device: str = "auto",
    batch_size: int = 8192,
    session_path: str | os.PathLike[str] | None = None,
) -> dict[str, np.ndarray]:
    """Run a graph over every row of a table; return the requested outputs.

    A fused graph compiled with --fill gets the table's missing values imputed first, as in compile.
    With `session_path`, onnxruntime reads the model from that file, so `model`
    may be loaded without its external data and is never serialised.
    """
    fill = json.loads(_props(model).get("akfc.fill", "{}"))
    if fill:
        table, _ = fill_missing(table, fill, file)
    session = make_session(model if session_path is None else session_path, device)
    return run_batched(session, _feeds(model, table, file, bindings), list(outputs), batch_size=batch_size)


def _source_prediction(kind: str, values: Any) -> np.ndarray:
    """Turn a source output into the form metrics take: P(class 1) for binary, (N, C) for multiclass."""
    values = np.asarray(values)  # run_batched already turned a ZipMap's maps into (N, C)
    if kind == "binary" and values.ndim == 2 and values.shape[1] == 2:
        return values[:, 1]
    return values


def evaluate_table(
    fused_path: str | os.PathLike[str],
    table: pa.Table,
    file: str,
    *,
    source_paths: Sequence[str | os.PathLike[str]] = (),
    device: str = "auto",
) -> dict[str, Any]:
    """Compute per-task metrics of the fused graph and, for each given source file, of that source and the sources' ensemble.

    Sources are matched to the fused graph's metadata by sha256, which gives
    their task, output and input bindings. Returns the report JSON shape.
    """
    # The weights stay on disk for onnxruntime; a graph above 2 GiB could not be handed over in memory.
    fused = onnx.load(str(fused_path), load_external_data=False)
    metadata = read_metadata(fused, str(fused_path))
    tasks = metadata.tasks
    _check_label_columns(table, tasks, file, str(fused_path))
    if metadata.fill:
        # Filled once here, so that the sources below read the same values as the fused graph.
        table, _ = fill_missing(table, metadata.fill, file)
    fused_outputs = predict(fused, table, file, [info["output"] for info in tasks.values()], device=device, session_path=fused_path)
    labels = {}
    for task, info in tasks.items():
        labels[task] = task_labels(table, info["label"], info["kind"], file, info.get("classes"), task=task)
        check_label_classes(labels[task], info["label"], info["kind"], file, info.get("classes"), task=task)

    report: dict[str, Any] = {"tasks": {}}
    for task, info in tasks.items():
        report["tasks"][task] = {
            "kind": info["kind"],
            "fused": task_metrics(info["kind"], labels[task], fused_outputs[info["output"]]),
            "sources": {},
        }

    by_hash = {source.sha256: source for source in metadata.sources}
    per_task: dict[str, list[np.ndarray]] = {}
    for path in source_paths:
        digest = file_sha256(path)
        record = by_hash.get(digest)
        if record is None:
            known = ", ".join(f"{s.name} ({s.file})" for s in metadata.sources)
            raise ModelError(f"source {path} is not one of the fused graph's sources (compared by sha256); its sources are {known}")
        model = onnx.load(str(path))
        kind = tasks[record.task]["kind"]
        output = predict(model, table, file, [record.output], bindings=record.inputs, device=device)[record.output]
        prediction = _source_prediction(kind, output)
        per_task.setdefault(record.task, []).append(prediction)
        report["tasks"][record.task]["sources"][record.name] = task_metrics(kind, labels[record.task], prediction)
    for task, predictions in per_task.items():
        if len(predictions) > 1:
            ensemble = np.mean([p.reshape(predictions[0].shape) for p in predictions], axis=0)
            report["tasks"][task]["ensemble"] = task_metrics(tasks[task]["kind"], labels[task], ensemble)
    return report


def _check_label_columns(table: pa.Table, tasks: Mapping[str, Mapping[str, Any]], file: str, fused_file: str) -> None:
    """Raise naming every task whose label column, fixed when the graph was compiled, the table lacks."""
    missing = {task: info["label"] for task, info in tasks.items() if info["label"] not in table.column_names}
    if missing:
        listing = ", ".join(f"task {task!r} reads column {column!r}" for task, column in missing.items())
        raise DataError(
            f"data file {file} lacks label columns of {fused_file}: {listing} (columns: {', '.join(table.column_names)}); "
            "add them to the table, or use `akfc run`, which needs no labels"
        )


def write_predictions(path: str | os.PathLike[str], predictions: Mapping[str, np.ndarray], tasks: Mapping[str, Mapping[str, Any]]) -> None:
    """Write one column per task (one per class for multiclass) as Parquet or CSV, by the file's extension."""
    path = Path(path)
    columns: dict[str, np.ndarray] = {}
    for task, info in tasks.items():
        values = np.asarray(predictions[info["output"]])
        if values.ndim == 2 and values.shape[1] > 1:
            for c in range(values.shape[1]):
                columns[f"{task}_{c}"] = values[:, c]
        else:
            columns[task] = values.reshape(-1)
    table = pa.table(columns)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        write_atomic(path, lambda tmp: pq.write_table(table, tmp))
    elif suffix == ".csv":
        write_atomic(path, lambda tmp: pa_csv.write_csv(table, tmp))
    else:
        raise ModelError(f"output file {path}: unknown format {path.suffix!r}; use .parquet or .csv")
