"""The batch axis: every source must take any number of rows along dim 0 of its inputs.

Fusion feeds a source many rows per call, so a source must not fix the
batch size. Exporters fix it in two ways:

- a model traced without a dynamic batch axis declares dim 0 = b (usually 1)
  on every graph input, and the shape constants computed from it are baked in
  (a Reshape to [1, -1]);
- a Reshape, Expand or Tile whose shape is a constant that fixes dim 0 of a
  tensor whose dim 0 follows the batch (a Reshape to [32, -1]).

``make_batch_dynamic`` frees a fixed batch axis when the graph allows it and
raises otherwise. ``check_batch_axis`` raises on a constant shape that fixes
the batch inside a graph whose inputs are already dynamic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from akfc.errors import ModelError
from akfc.passes._checks import check_emitted
from akfc.passes.dataflow import node_input_names, unique_name
from akfc.passes.id_ranges import embedding_limits

__all__ = ["BATCH_DIM", "check_batch_axis", "fixed_batch_inputs", "make_batch_dynamic"]

logger = logging.getLogger(__name__)

BATCH_DIM = "batch"  # the dim_param given to a freed batch axis when no input names one already
# The ops whose second input is a shape (or repeats) that can fix the size of dim 0.
_SHAPE_OPS = frozenset({"Reshape", "Expand", "Tile"})
_ORT_ERRORS = (ort_state.Fail, ort_state.InvalidArgument, ort_state.InvalidGraph, ort_state.NotImplemented, ort_state.RuntimeException)
# The probe compares the freed model on 3 batches' worth of rows with the original run batch by batch.
_PROBE_BATCHES = 3
_PROBE_OTHER_DIM = 2  # the size given to symbolic dims other than the batch during the probe
# Float kernels may block differently at another batch size, so results may differ in the last bits.
_PROBE_RTOL, _PROBE_ATOL = 1e-4, 1e-5
_SHAPE_HINT = "compute shapes from the input (x.flatten(1) or x.reshape(x.shape[0], -1)) instead of from a fixed batch size"


def _reexport_hint(input_name: str) -> str:
    return (
        f"re-export the model with a dynamic batch axis (dynamic_axes={{{input_name!r}: {{0: 'batch'}}}} in "
        f"torch.onnx.export, or dynamic_shapes with dynamo=True) and {_SHAPE_HINT}"
    )


@dataclass(frozen=True)
class _FixedShape:
    """A Reshape, Expand or Tile whose constant shape fixes dim 0 of a tensor that follows the batch."""

    node: onnx.NodeProto
    data: str  # the tensor whose dim 0 follows the batch
    data_shape: list[int | str | None]
    shape: str  # the constant shape (or repeats) tensor
    values: list[int]
    position: int  # index into values of the entry that fixes dim 0

    def describe(self) -> str:
        label = f"node {self.node.name!r}" if self.node.name else "unnamed node"
        dims = ", ".join("?" if dim is None else str(dim) for dim in self.data_shape)
        verb = {"Reshape": "reshapes", "Expand": "expands", "Tile": "tiles"}[self.node.op_type]
        if self.node.op_type == "Tile":
            effect = f"which repeats every row {self.values[self.position]} times"
        else:
            effect = f"which fixes the batch size at {self.values[self.position]}"
        return (
            f"{label} ({self.node.op_type}, output {self.node.output[0]!r}) {verb} {self.data!r} [{dims}] by the constant "
            f"{self.shape!r} = {self.values}, {effect}"
        )


def fixed_batch_inputs(model: onnx.ModelProto) -> dict[str, int]:
    """Map each graph input (initializers excluded) whose dim 0 is a fixed number to that number."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    fixed = {}
    for value in model.graph.input:
        if value.name in initializers or not value.type.HasField("tensor_type"):
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            fixed[value.name] = int(dims[0].dim_value)
    return fixed


def check_batch_axis(model: onnx.ModelProto, *, origin: str = "model") -> None:
    """Raise when a Reshape, Expand or Tile with a constant shape fixes dim 0 of a tensor that follows the batch.

    A tensor follows the batch when shape inference leaves its dim 0 symbolic
    or unknown. Constants are initializers and Constant nodes, so run this
    after constant folding to see shapes computed from constants too. The
    model is not modified.

    Raises:
        ModelError: naming the node, the tensor it reshapes, the constant and the fix.
    """
    fixed = _fixed_shapes(model)
    if fixed:
        raise ModelError(f"{origin}: {_describe_all(fixed)}; a source must accept any number of rows, so {_SHAPE_HINT} and export the model again")


def make_batch_dynamic(model: onnx.ModelProto, *, origin: str = "model") -> onnx.ModelProto:
    """Return a copy whose graph inputs take any batch size, when the inputs fix one and the graph allows it.

    A model whose inputs all have a symbolic dim 0 is returned as a copy. For
    fixed inputs (dim 0 = b), dim 0 of every input, and of every output with
    dim 0 = b, becomes symbolic. A Reshape whose constant shape starts with b
    on a tensor whose dim 0 is the batch gets 0 there (copy dim 0), and an
    Expand gets 1 (broadcast), which computes the same at batch b and
    follows any batch. The result is then checked by running it in
    onnxruntime on three batches' worth of rows against the original model
    run one batch at a time.

    Raises:
        ModelError: the inputs fix different batch sizes, a shape constant fixes
            the batch in a way that cannot be rewritten, the graph fails shape
            inference or onnxruntime at another batch size, or the freed model
            computes other values. The message names the node or output at fault.
    """
    fixed = fixed_batch_inputs(model)
    if not fixed:
        return _copy(model)
    sizes = sorted(set(fixed.values()))
    if len(sizes) > 1:
        listing = ", ".join(f"{name!r} ({size})" for name, size in fixed.items())
        raise ModelError(
            f"{origin}: the graph inputs fix different sizes of dim 0 ({listing}), so akfc cannot tell the batch axis; "
            + _reexport_hint(next(iter(fixed)))
        )
    batch = sizes[0]
    context = f"{origin}: graph inputs {_listing(list(fixed))} fix the batch size at {batch}"
    hint = _reexport_hint(next(iter(fixed)))

    # 1. symbolic dim 0 on the inputs and on the outputs that had the batch size
    candidate = _copy(model)
    symbol = _batch_symbol(candidate.graph)
    for value in candidate.graph.input:
        if value.name in fixed:
            value.type.tensor_type.shape.dim[0].dim_param = symbol
    for value in candidate.graph.output:
        dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else []
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == batch:
            dims[0].dim_param = symbol
    del candidate.graph.value_info[:]  # inferred for the fixed batch

    # 2. constant shapes that repeat the batch size, then the whole graph at a symbolic batch
    rewritten = _rewrite_fixed_shapes(candidate, batch, symbol)
    remaining = _fixed_shapes(candidate)
    if remaining:
        raise ModelError(f"{context}, and {_describe_all(remaining)}; {hint}")
    try:
        onnx.shape_inference.infer_shapes(candidate, check_type=True, strict_mode=True, data_prop=True)
    except onnx.shape_inference.InferenceError as error:
        raise ModelError(f"{context}, and the graph fails shape inference with any other batch size: {error}; {hint}") from error
    checked = check_emitted(candidate, f"make_batch_dynamic of {origin}")
    del checked.graph.value_info[:]

    # 3. the freed model must compute, row for row, what the original computes
    _probe(model, checked, batch, context, hint)
    logger.info("%s; made it dynamic (%d shape constants rewritten)", context, rewritten)
    return checked


def _listing(names: list[str], limit: int = 3) -> str:
    text = ", ".join(repr(name) for name in names[:limit])
    return text if len(names) <= limit else f"{text} and {len(names) - limit} more"


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copied = onnx.ModelProto()
    copied.CopyFrom(model)
    return copied


def _batch_symbol(graph: onnx.GraphProto) -> str:
    """Return the dim_param that an input already uses for dim 0, else BATCH_DIM."""
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else []
        if dims and dims[0].dim_param:
            return dims[0].dim_param
    return BATCH_DIM


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for attribute in node.attribute:
            if attribute.name == "value":
                values[node.output[0]] = onnx.numpy_helper.to_array(attribute.t)
            elif attribute.name in ("value_ints", "value_int"):
                values[node.output[0]] = np.array(onnx.helper.get_attribute_value(attribute), dtype=np.int64)
    return values


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor_type = value.type.tensor_type if value.type.HasField("tensor_type") else None
        if tensor_type is None or not tensor_type.HasField("shape"):
            continue
        shapes[value.name] = [
            int(dim.dim_value) if dim.HasField("dim_value") else (dim.dim_param or None) for dim in tensor_type.shape.dim
        ]
    return shapes


def _fixed_shapes(model: onnx.ModelProto) -> list[_FixedShape]:
    """Find the Reshape, Expand and Tile nodes whose constant shape fixes dim 0 of a tensor that follows the batch."""
    graph = model.graph
    shapes = _inferred_shapes(model)
    constants = _constants(graph)
    found = []
    for node in graph.node:
        if node.op_type not in _SHAPE_OPS or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        data_shape = shapes.get(node.input[0])
        values = constants.get(node.input[1])
        # A static dim 0 does not follow the batch (the batch is elsewhere, or the tensor is a constant).
        if not data_shape or isinstance(data_shape[0], int) or values is None or node.input[0] in constants:
            continue
        entries = [int(value) for value in values.reshape(-1)]
        position = _fixing_position(node, entries, len(data_shape))
        if position is not None:
            found.append(_FixedShape(node, node.input[0], data_shape, node.input[1], entries, position))
    return found


def _fixing_position(node: onnx.NodeProto, values: list[int], rank: int) -> int | None:
    """Return the index of the entry that fixes dim 0 of the node's data input, or None when dim 0 stays free."""
    if not values:
        return None
    if node.op_type == "Reshape":
        # 0 copies the input's dim and -1 takes what is left, so both follow the batch.
        return 0 if values[0] not in (0, -1) else None
    if node.op_type == "Expand":
        # Expand broadcasts from the right: the input's dim 0 meets the entry len(values) - rank.
        position = len(values) - rank
        return position if position >= 0 and values[position] != 1 else None
    return 0 if values[0] != 1 else None  # Tile: repeats of dim 0


def _rewrite_fixed_shapes(model: onnx.ModelProto, batch: int, symbol: str) -> int:
    """Make Reshape and Expand shapes that repeat the batch size follow dim 0 instead; return how many were rewritten.

    Only nodes whose data input has the batch symbol itself as dim 0 are
    rewritten: their entry equals the batch size, so the rewrite computes the
    same values at the original batch size.
    NOTE: a shape computed from constants by other nodes is not seen here, because the graph is not folded yet.
    Such a Reshape keeps the fixed size, and the probe in make_batch_dynamic then rejects the model.
    """
    graph = model.graph
    taken = {tensor.name for tensor in graph.initializer} | {name for node in graph.node for name in node.output}
    count = 0
    for fixed in _fixed_shapes(model):
        node, values = fixed.node, list(fixed.values)
        if fixed.data_shape[0] != symbol or values[fixed.position] != batch or node.op_type == "Tile":
            continue
        if node.op_type == "Reshape" and _allows_zero(node):
            # With allowzero=1 a 0 is an empty dim, not a copy, and the torch exporter sets it. Without
            # other 0 entries the attribute changes nothing, so it can go.
            if 0 in values:
                continue
            _drop_attribute(node, "allowzero")
        values[fixed.position] = 0 if node.op_type == "Reshape" else 1
        name = unique_name(f"{fixed.shape}_dynamic_batch", taken)
        graph.initializer.append(onnx.numpy_helper.from_array(np.array(values, dtype=np.int64), name))
        node.input[1] = name
        logger.debug("%s: shape %s -> %s", node.name or node.output[0], fixed.values, values)
        count += 1
    if count:
        _drop_unused_constants(graph)
    return count


def _allows_zero(node: onnx.NodeProto) -> bool:
    return any(attribute.name == "allowzero" and attribute.i for attribute in node.attribute)


def _drop_attribute(node: onnx.NodeProto, name: str) -> None:
    kept = [attribute for attribute in node.attribute if attribute.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)


def _drop_unused_constants(graph: onnx.GraphProto) -> None:
    """Remove initializers and Constant nodes that no node or graph output reads any more."""
    used = {name for node in graph.node for name in node_input_names(node)} | {value.name for value in graph.output}
    kept_nodes = [node for node in graph.node if node.op_type != "Constant" or node.output[0] in used]
    kept_initializers = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept_initializers)


def _describe_all(fixed: list[_FixedShape]) -> str:
    more = f" (and {len(fixed) - 1} more such nodes)" if len(fixed) > 1 else ""
    return fixed[0].describe() + more


def _probe_feeds(model: onnx.ModelProto, rows: int) -> dict[str, np.ndarray]:
    """Build `rows` rows for every graph input: seeded normal floats, ids that differ per row within their table."""
    rng = np.random.default_rng(0)
    initializers = {tensor.name for tensor in model.graph.initializer}
    limits = embedding_limits(model)
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        shape = [rows] + [int(dim.dim_value) if dim.HasField("dim_value") else _PROBE_OTHER_DIM for dim in tensor_type.shape.dim[1:]]
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        if dtype.kind == "f":
            feeds[value.name] = rng.normal(size=shape).astype(dtype)
        elif dtype.kind in "iu":
            limit = limits.get(value.name, 1)
            feeds[value.name] = (np.arange(int(np.prod(shape))).reshape(shape) % limit).astype(dtype)
        elif dtype.kind == "O":
            feeds[value.name] = np.full(shape, "", dtype=object)
        else:
            feeds[value.name] = np.zeros(shape, dtype=dtype)
    return feeds


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 4  # a failing run is reported in the ModelError, not logged again
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _probe(original: onnx.ModelProto, freed: onnx.ModelProto, batch: int, context: str, hint: str) -> None:
    """Raise unless the freed model, on _PROBE_BATCHES batches of rows at once, equals the original run batch by batch."""
    rows = batch * _PROBE_BATCHES
    per_batch = f"{batch} row{'s' if batch > 1 else ''} at a time"
    feeds = _probe_feeds(freed, rows)
    outputs = [value.name for value in original.graph.output]
    try:
        session = _session(original)
        chunks = [
            session.run(outputs, {name: array[start : start + batch] for name, array in feeds.items()})
            for start in range(0, rows, batch)
        ]
    except _ORT_ERRORS as error:
        raise ModelError(
            f"{context}, and onnxruntime fails to run the graph on test rows, so akfc cannot check that another batch "
            f"size is safe: {error}; {hint}"
        ) from error
    try:
        results = _session(freed).run(outputs, feeds)
    except _ORT_ERRORS as error:
        raise ModelError(f"{context}, and onnxruntime fails on {rows} rows at once: {error}; {hint}") from error
    for index, (name, result) in enumerate(zip(outputs, results)):
        expected = [chunk[index] for chunk in chunks]
        if not all(isinstance(part, np.ndarray) for part in [result, *expected]):
            continue
        if result.ndim == 0 or result.shape[0] != rows:
            raise ModelError(
                f"{context}; with {rows} rows, output {name!r} has shape {list(result.shape)}, so it does not follow "
                f"the batch; {hint}"
            )
        reference = np.concatenate(expected, axis=0)
        if result.shape != reference.shape or not np.allclose(result, reference, rtol=_PROBE_RTOL, atol=_PROBE_ATOL, equal_nan=True):
            raise ModelError(
                f"{context}; with {rows} rows at once, output {name!r} differs from {per_batch}, so its rows depend "
                f"on each other; {hint}"
            )
