"""Random small compile cases for the fuzz test: ONNX sources, data tables and one injected fault.

A case is drawn by hypothesis as a `Case` record of small choices (seeds,
shapes, templates, the fault and where it hits), and `build_case` turns it into
files: one ONNX file per source, built with onnx.helper and seeded numpy
weights, and a train and a valid table. The weights and data come from a seed,
so the drawn record stays short enough to read when hypothesis prints a failing
example.

Every source reads graph inputs named after data columns: float32 numeric
columns as [N] or [N, 1], and int64 id columns as [N] through a Gather on an
embedding table. Its body is one of these templates:

- ``mlp``: a chain of 1-4 linear layers (Gemm, or MatMul and Add) with Relu,
  Tanh or Sigmoid;
- ``two_branch``: two chains from the same features, merged by Concat or Add;
- ``residual``: a linear layer, then blocks x + f(x);
- ``constant`` (fault constant_output only): an output that does not depend
  on the input values.

Its head is a linear layer and Sigmoid (binary), Softmax or LogSoftmax
(multiclass), or nothing (regression).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from hypothesis import strategies as st

__all__ = ["DATA_FAULTS", "FAULTS", "MODEL_FAULTS", "MUST_FAIL", "OUTCOMES", "BuiltCase", "Case", "Fault", "SourcePlan", "TaskPlan", "build_case", "cases"]

NUMERIC_COLUMNS = ("num_a", "num-b", "num_c")
ID_COLUMNS = ("cat_a", "cat-b")
UNUSED_COLUMN = "row_id"  # an id column that no source reads

# Faults in the data tables.
DATA_FAULTS = (
    "nan_feature",
    "inf_feature",
    "text_in_numeric",
    "missing_feature",
    "missing_label",
    "id_out_of_range",
    "label_out_of_range",
    "nan_label",
    "single_label_valid",
    "empty_valid",
    "different_columns",
)
# Faults in a source model.
MODEL_FAULTS = ("fixed_batch", "truncated_model", "shared_input_dtype", "constant_output")
FAULTS = DATA_FAULTS + MODEL_FAULTS
# Faults that no correct compile can accept: the data or model is unusable as it is.
MUST_FAIL = {
    "nan_feature": "DataError",
    "inf_feature": "DataError",
    "text_in_numeric": "DataError",
    "missing_feature": "DataError",
    "missing_label": "DataError",
    "id_out_of_range": "DataError",
    "label_out_of_range": "DataError",
    "nan_label": "DataError",
    "empty_valid": "DataError",
    "truncated_model": "ModelError",
}

# Outcome ("compiled with fault F", "DataError on fault F", ...) -> runs; the fuzz test counts them, conftest prints them.
OUTCOMES: Counter[str] = Counter()

_ACTIVATIONS = ("Relu", "Tanh", "Sigmoid")
_OPSETS = (17, 18, 19, 20, 21)


@dataclass(frozen=True)
class TaskPlan:
    """One task: its kind, class count (multiclass only) and how its labels are made."""

    name: str
    kind: str  # binary, multiclass or regression
    classes: int  # 1 for binary and regression
    learnable: bool  # labels follow the features, else they are noise
    label_dtype: str  # int64, float64 or bool (binary); float32 for regression


@dataclass(frozen=True)
class SourcePlan:
    """One source model: what it reads, its template and layer sizes."""

    task: str
    opset: int
    inputs: tuple[tuple[str, int], ...]  # (column, rank of the graph input); ids always have rank 1
    template: str  # mlp, two_branch, residual or constant
    widths: tuple[int, ...]  # hidden widths; two_branch splits them between its branches
    gemm: bool  # linear layers as Gemm, else MatMul and Add
    activation: str
    merge: str  # two_branch only: Concat or Add
    embedding: int  # width of each id embedding
    head: str  # Sigmoid, Softmax, LogSoftmax or none
    squeeze: bool  # a [N, 1] output squeezed to [N]
    dtypes: tuple[tuple[str, str], ...] = ()  # graph input -> element type other than the default
    batch: int | None = None  # a fixed batch dim on inputs and output, else symbolic
    constant: str = ""  # template constant only: expand, initializer or zero_weights


@dataclass(frozen=True)
class Fault:
    """The injected fault and where it hits; kind "none" for a clean case."""

    kind: str
    split: str = ""  # train, valid or both; empty for a fault in a model
    target: str = ""  # the column, task or source index it hits
    row: int = 0  # the row it hits, in 1/1000 of the split's rows (truncated_model: of the file's bytes)
    value: str = ""  # the bad value or the variant of the fault


@dataclass(frozen=True)
class Case:
    """Everything one fuzz example builds and compiles."""

    seed: int
    rows: int  # train rows; valid has rows // 3
    numeric: tuple[str, ...]
    ids: tuple[tuple[str, int], ...]  # (column, number of distinct ids in the data)
    tasks: tuple[TaskPlan, ...]
    sources: tuple[SourcePlan, ...]
    fault: Fault
    csv: bool  # write the tables as CSV, else Parquet
    options: dict[str, object] = field(default_factory=dict)  # compile options: epochs, levels, width, ...


@dataclass
class BuiltCase:
    """The files of a built case."""

    sources: list[str]  # TASK=PATH arguments
    train: Path
    valid: Path
    valid_table: pa.Table | None  # the valid data as written, None when the file was written empty
    kinds: dict[str, tuple[str, int]]  # task -> (kind, classes) as the sources declare them


# -- strategies ---------------------------------------------------------------------------------------------------


@st.composite
def _task(draw: st.DrawFn, name: str, classification: bool) -> TaskPlan:
    kind = draw(st.sampled_from(("binary", "multiclass") if classification else ("binary", "multiclass", "regression")))
    classes = draw(st.integers(2, 4)) if kind == "multiclass" else 1
    dtypes = {"binary": ("int64", "float64", "bool"), "multiclass": ("int64", "float64"), "regression": ("float32", "float64")}[kind]
    return TaskPlan(name, kind, classes, draw(st.booleans()), draw(st.sampled_from(dtypes)))


@st.composite
def _source(draw: st.DrawFn, task: TaskPlan, columns: list[str], ids: dict[str, int], required: tuple[str, ...]) -> SourcePlan:
    chosen = draw(st.lists(st.sampled_from(columns), min_size=1, max_size=len(columns), unique=True))
    chosen = [*required, *(c for c in chosen if c not in required)]
    inputs = tuple((column, 1 if column in ids else draw(st.sampled_from((1, 2)))) for column in chosen)
    template = draw(st.sampled_from(("mlp", "two_branch", "residual")))
    depth = {"mlp": (1, 4), "two_branch": (2, 4), "residual": (2, 3)}[template]
    widths = tuple(draw(st.lists(st.integers(1, 32), min_size=depth[0], max_size=depth[1])))
    head = {"binary": "Sigmoid", "regression": "none"}.get(task.kind) or draw(st.sampled_from(("Softmax", "LogSoftmax")))
    return SourcePlan(
        task=task.name,
        opset=draw(st.sampled_from(_OPSETS)),
        inputs=inputs,
        template=template,
        widths=widths,
        gemm=draw(st.booleans()),
        activation=draw(st.sampled_from(_ACTIVATIONS)),
        merge=draw(st.sampled_from(("Concat", "Add"))),
        embedding=draw(st.integers(1, 4)),
        head=head,
        squeeze=task.kind != "multiclass" and draw(st.booleans()),
    )


@st.composite
def cases(draw: st.DrawFn, kind: str) -> Case:
    """Draw a case with the given fault: "none" or one of FAULTS."""
    rows = draw(st.integers(64, 300))
    numeric = NUMERIC_COLUMNS[: draw(st.integers(1, len(NUMERIC_COLUMNS)))]
    id_columns = ID_COLUMNS[: draw(st.integers(1 if kind == "id_out_of_range" else 0, len(ID_COLUMNS)))]
    ids = {column: draw(st.integers(2, 12)) for column in id_columns}

    # tasks: the first one classifies when the fault is about class labels
    tasks = [draw(_task("t0", classification=kind in ("label_out_of_range", "single_label_valid")))]
    if draw(st.booleans()):
        tasks.append(draw(_task("t1", classification=False)))
    count = draw(st.integers(max(2, len(tasks)), 3))
    owners = [*tasks, *(draw(st.sampled_from(tasks)) for _ in range(count - len(tasks)))]

    # sources: the first two read the same column when the fault is about a shared input
    shared: tuple[str, ...] = ()
    if kind == "shared_input_dtype":
        shared = (numeric[0],)
    elif kind == "id_out_of_range":
        shared = (id_columns[0],)
    sources = [draw(_source(task, [*numeric, *ids], ids, shared if m < 2 else ())) for m, task in enumerate(owners)]

    fault, sources = _fault(draw, kind, rows, numeric, tasks, sources)
    options = {
        "epochs": draw(st.integers(1, 2)),
        # Each fused level adds a torch export of about 1.5 s, the largest cost of a compile this small.
        "levels": draw(st.sampled_from((1, 1, 1, 1, 1, 1, 1, 2))),
        "width": draw(st.sampled_from((4, 8))),
        "heads": draw(st.sampled_from((1, 2))),
        "batch_size": draw(st.sampled_from((32, 64, 512))),
        "lr": 1e-3,
        "seed": draw(st.integers(0, 3)),
    }
    return Case(
        seed=draw(st.integers(0, 2**16)),
        rows=rows,
        numeric=numeric,
        ids=tuple(ids.items()),
        tasks=tuple(tasks),
        sources=tuple(sources),
        fault=fault,
        csv=draw(st.integers(0, 4)) == 0,
        options=options,
    )


def _fault(
    draw: st.DrawFn, kind: str, rows: int, numeric: tuple[str, ...], tasks: list[TaskPlan], sources: list[SourcePlan]
) -> tuple[Fault, list[SourcePlan]]:
    """Draw where the fault hits; return it and the sources, changed for a fault in a model."""
    read = sorted({column for source in sources for column, _ in source.inputs})
    target_source = draw(st.integers(0, len(sources) - 1))
    row = draw(st.integers(0, 999))
    split = draw(st.sampled_from(("train", "valid")))
    either = draw(st.sampled_from(("train", "valid", "both")))
    sources = list(sources)

    if kind in ("nan_feature", "inf_feature", "text_in_numeric"):
        if kind == "nan_feature":
            value = "nan"
        elif kind == "inf_feature":
            value = draw(st.sampled_from(("inf", "-inf")))
        else:
            value = draw(st.sampled_from(("abc", "1,5", "")))
        column = draw(st.sampled_from([c for c in read if c in numeric] or read))
        return Fault(kind, split, column, row, value), sources
    if kind == "missing_feature":
        return Fault(kind, either, draw(st.sampled_from(read))), sources
    if kind in ("missing_label", "nan_label"):
        return Fault(kind, either, draw(st.sampled_from(tasks)).name, row), sources
    if kind == "id_out_of_range":
        return Fault(kind, split, sources[0].inputs[0][0], row, draw(st.sampled_from(("above", "negative")))), sources
    if kind == "label_out_of_range":
        return Fault(kind, split, tasks[0].name, row, draw(st.sampled_from(("above", "negative")))), sources
    if kind == "single_label_valid":
        return Fault(kind, "valid", tasks[0].name, value=draw(st.sampled_from(("0", "1")))), sources
    if kind == "empty_valid":
        return Fault(kind, "valid"), sources
    if kind == "different_columns":
        return Fault(kind, split, value=draw(st.sampled_from(("extra", "lacks_unused", "lacks_read")))), sources
    if kind == "fixed_batch":
        batch = draw(st.sampled_from((1, 8, rows)))
        sources[target_source] = replace(sources[target_source], batch=batch)
        return Fault(kind, target=str(target_source), value=str(batch)), sources
    if kind == "truncated_model":
        return Fault(kind, target=str(target_source), row=draw(st.integers(1, 999))), sources
    if kind == "shared_input_dtype":
        column, dtype = sources[1].inputs[0][0], draw(st.sampled_from(("float64", "int64", "int32", "float16")))
        sources[1] = replace(sources[1], dtypes=((column, dtype),))
        return Fault(kind, target=column, value=dtype), sources
    if kind == "constant_output":
        variant = draw(st.sampled_from(("expand", "initializer", "zero_weights")))
        sources[target_source] = replace(sources[target_source], template="constant", constant=variant)
        return Fault(kind, target=str(target_source), value=variant), sources
    assert kind == "none", kind
    return Fault(kind), sources


# -- models -------------------------------------------------------------------------------------------------------


class _Graph:
    """Nodes and seeded initializers of one source graph under construction."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def constant(self, values: np.ndarray, prefix: str = "c") -> str:
        name = self.name(prefix)
        self.initializers.append(onnx.numpy_helper.from_array(values, name))
        return name

    def weight(self, *shape: int, scale: float | None = None) -> str:
        scale = scale if scale is not None else 1.0 / math.sqrt(shape[0])
        return self.constant(self.rng.normal(0.0, scale, size=shape).astype(np.float32), "w")

    def node(self, op: str, inputs: list[str], **attributes: object) -> str:
        output = self.name(op.lower())
        self.nodes.append(onnx.helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def linear(self, x: str, width_in: int, width_out: int, gemm: bool, scale: float | None = None) -> str:
        weight, bias = self.weight(width_in, width_out, scale=scale), self.weight(width_out, scale=0.1)
        if gemm:
            return self.node("Gemm", [x, weight, bias])
        return self.node("Add", [self.node("MatMul", [x, weight]), bias])

    def chain(self, x: str, width: int, widths: tuple[int, ...], plan: SourcePlan) -> tuple[str, int]:
        for out in widths:
            x = self.node(plan.activation, [self.linear(x, width, out, plan.gemm)])
            width = out
        return x, width


def _stem(graph: _Graph, plan: SourcePlan, ids: dict[str, int]) -> tuple[list[onnx.ValueInfoProto], str, int]:
    """Build the graph inputs and their concatenated features [N, F]."""
    dtypes = dict(plan.dtypes)
    inputs, parts, width = [], [], 0
    for column, rank in plan.inputs:
        if column in ids:
            inputs.append(onnx.helper.make_tensor_value_info(column, onnx.TensorProto.INT64, ["N"]))
            table = graph.weight(ids[column], plan.embedding, scale=1.0)
            parts.append(graph.node("Gather", [table, column]))
            width += plan.embedding
            continue
        dtype = dtypes.get(column, "float32")
        element = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        inputs.append(onnx.helper.make_tensor_value_info(column, element, ["N"] if rank == 1 else ["N", 1]))
        x = column if dtype == "float32" else graph.node("Cast", [column], to=onnx.TensorProto.FLOAT)
        if rank == 1:
            x = graph.node("Unsqueeze", [x, graph.constant(np.array([1], dtype=np.int64))])
        parts.append(x)
        width += 1
    features = parts[0] if len(parts) == 1 else graph.node("Concat", parts, axis=1)
    return inputs, features, width


def _body(graph: _Graph, plan: SourcePlan, x: str, width: int) -> tuple[str, int]:
    if plan.template == "mlp":
        return graph.chain(x, width, plan.widths, plan)
    if plan.template == "two_branch":
        half = max(1, len(plan.widths) // 2)
        left, left_width = graph.chain(x, width, plan.widths[:half], plan)
        right_widths = plan.widths[half:]
        if plan.merge == "Add":
            right_widths = (*right_widths[:-1], left_width)
        right, right_width = graph.chain(x, width, right_widths, plan)
        if plan.merge == "Add":
            return graph.node("Add", [left, right]), left_width
        return graph.node("Concat", [left, right], axis=1), left_width + right_width
    # residual: x + f(x) blocks of the first width
    x, width = graph.chain(x, width, plan.widths[:1], plan)
    for _ in plan.widths[1:]:
        inner = graph.node(plan.activation, [graph.linear(x, width, width, plan.gemm)])
        x = graph.node("Add", [x, graph.linear(inner, width, width, plan.gemm, scale=0.1)])
    return x, width


def _constant_head(graph: _Graph, variant: str, features: str, width: int, classes: int, plan: SourcePlan) -> str:
    """Build a logit [N, classes] whose values do not depend on the input values."""
    if variant == "zero_weights":
        return graph.linear(features, width, classes, plan.gemm, scale=0.0)
    values = graph.constant(graph.rng.normal(size=(1, classes)).astype(np.float32))
    if variant == "initializer":
        return graph.node("Identity", [values])
    batch = graph.node("Slice", [graph.node("Shape", [features]), graph.constant(np.array([0])), graph.constant(np.array([1]))])
    shape = graph.node("Concat", [batch, graph.constant(np.array([classes]))], axis=0)
    return graph.node("Expand", [values, shape])


def build_source(plan: SourcePlan, ids: dict[str, int], classes: int, rng: np.random.Generator) -> onnx.ModelProto:
    """Build one source as an ONNX model that passes the full checker."""
    graph = _Graph(rng)
    inputs, features, width = _stem(graph, plan, ids)

    # body and head
    if plan.template == "constant":
        logit = _constant_head(graph, plan.constant, features, width, classes, plan)
    else:
        hidden, width = _body(graph, plan, features, width)
        logit = graph.linear(hidden, width, classes, plan.gemm)
    output = logit
    if plan.head == "Sigmoid":
        output = graph.node("Sigmoid", [logit])
    elif plan.head in ("Softmax", "LogSoftmax"):
        output = graph.node(plan.head, [logit], axis=-1)

    # graph outputs: [N, classes], or [N] when squeezed, with a fixed batch dim when the plan has one
    shape: list[str | int] = ["N", classes]
    if plan.squeeze:
        output = graph.node("Squeeze", [output, graph.constant(np.array([1], dtype=np.int64))])
        shape = ["N"]
    if plan.batch is not None:
        shape[0] = plan.batch
        for value in inputs:
            value.type.tensor_type.shape.dim[0].dim_value = plan.batch
    outputs = [onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, shape)]

    model = onnx.helper.make_model(
        onnx.helper.make_graph(graph.nodes, "source", inputs, outputs, graph.initializers),
        opset_imports=[onnx.helper.make_opsetid("", plan.opset)],
        producer_name="akfc-fuzz",
    )
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import))
    onnx.checker.check_model(model, full_check=True)
    return model


# -- data ---------------------------------------------------------------------------------------------------------


def _labels(task: TaskPlan, features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rows = len(features)
    if task.kind == "regression":
        values = features @ rng.normal(size=features.shape[1]) if task.learnable else rng.normal(size=rows)
        return (values + 0.1 * rng.normal(size=rows)).astype(task.label_dtype)
    if task.kind == "binary":
        score = features @ rng.normal(size=features.shape[1]) if task.learnable else rng.normal(size=rows)
        labels = (score > np.median(score)).astype(np.int64)
    else:
        scores = features @ rng.normal(size=(features.shape[1], task.classes)) if task.learnable else rng.normal(size=(rows, task.classes))
        labels = np.argmax(scores + 0.3 * rng.normal(size=scores.shape), axis=1).astype(np.int64)
    return labels.astype(task.label_dtype)


def _table(case: Case, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {}
    for column in case.numeric:
        columns[column] = rng.normal(size=rows).astype(np.float32)
    for column, count in case.ids:
        columns[column] = rng.integers(0, count, size=rows).astype(np.int64)
    columns[UNUSED_COLUMN] = np.arange(rows, dtype=np.int64)
    if case.fault.kind == "shared_input_dtype" and case.fault.value.startswith("int"):
        # whole numbers, so that an integer reader of the column can take it without loss
        columns[case.fault.target] = np.round(3 * columns[case.fault.target])
    features = np.stack([columns[c].astype(np.float64) for c in (*case.numeric, *(c for c, _ in case.ids))], axis=1)
    for task in case.tasks:
        columns[task.name] = _labels(task, features, rng)
    return columns


def _row(fault: Fault, rows: int) -> int:
    return fault.row * rows // 1000


def _inject(fault: Fault, split: str, columns: dict[str, np.ndarray], case: Case) -> dict[str, object]:
    """Apply a data fault to one split's columns; return the columns to write (values may become lists of text)."""
    hits = fault.split in (split, "both")
    out: dict[str, object] = dict(columns)
    rows = len(next(iter(columns.values())))
    kind = fault.kind
    if not hits:
        return out
    if kind in ("nan_feature", "inf_feature"):
        values = columns[fault.target].astype(np.float32 if fault.target in case.numeric else np.float64)
        values[_row(fault, rows)] = float(fault.value)
        out[fault.target] = values
    elif kind == "text_in_numeric":
        text = [repr(float(v)) if fault.target in case.numeric else str(int(v)) for v in columns[fault.target]]
        text[_row(fault, rows)] = fault.value
        out[fault.target] = text
    elif kind in ("missing_feature", "missing_label"):
        del out[fault.target]
    elif kind == "id_out_of_range":
        values = columns[fault.target].copy()
        values[_row(fault, rows)] = -1 if fault.value == "negative" else dict(case.ids)[fault.target] + 5
        out[fault.target] = values
    elif kind == "label_out_of_range":
        task = next(t for t in case.tasks if t.name == fault.target)
        values = columns[task.name].astype(np.int64 if task.label_dtype == "bool" else columns[task.name].dtype)
        if fault.value == "negative":
            values[_row(fault, rows)] = -1
        else:
            values[_row(fault, rows)] = 2 if task.kind == "binary" else task.classes
        out[task.name] = values
    elif kind == "nan_label":
        values = columns[fault.target].astype(np.float64)
        values[_row(fault, rows)] = np.nan
        out[fault.target] = values
    elif kind == "single_label_valid":
        task = next(t for t in case.tasks if t.name == fault.target)
        out[task.name] = np.full(rows, int(fault.value)).astype(columns[task.name].dtype)
    elif kind == "different_columns":
        if fault.value == "extra":
            out["extra_column"] = np.ones(rows, dtype=np.float32)
        elif fault.value == "lacks_unused":
            del out[UNUSED_COLUMN]
        else:
            del out[case.sources[0].inputs[0][0]]
    return out


def _write_table(columns: dict[str, object], path: Path, csv: bool) -> pa.Table:
    table = pa.table({name: pa.array(values) for name, values in columns.items()})
    if csv:
        pa_csv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    return table


def build_case(case: Case, folder: Path) -> BuiltCase:
    """Write the case's sources and tables into folder; return their paths."""
    rng = np.random.default_rng(case.seed)
    ids = dict(case.ids)
    classes = {task.name: task.classes for task in case.tasks}
    fault = case.fault

    # sources
    arguments = []
    for m, plan in enumerate(case.sources):
        model = build_source(plan, ids, classes[plan.task], rng)
        path = folder / f"{plan.task}_{plan.template}_{m}.onnx"
        data = model.SerializeToString()
        if fault.kind == "truncated_model" and int(fault.target) == m:
            data = data[: max(1, len(data) * fault.row // 1000)]
        path.write_bytes(data)
        arguments.append(f"{plan.task}={path}")

    # tables
    suffix = "csv" if case.csv else "parquet"
    train, valid = folder / f"train.{suffix}", folder / f"valid.{suffix}"
    _write_table(_inject(fault, "train", _table(case, case.rows, rng), case), train, case.csv)
    valid_columns = _inject(fault, "valid", _table(case, max(1, case.rows // 3), rng), case)
    valid_table: pa.Table | None = None
    if fault.kind == "empty_valid":
        empty = {name: np.asarray(values)[:0] for name, values in valid_columns.items()}
        _write_table(empty, valid, case.csv)
    else:
        valid_table = _write_table(valid_columns, valid, case.csv)
    kinds = {task.name: (task.kind, task.classes) for task in case.tasks}
    return BuiltCase(arguments, train, valid, valid_table, kinds)
