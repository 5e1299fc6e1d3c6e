"""Dataflow analysis of an ONNX graph, shared by decomposition, extraction and inspection.

Every tensor falls in one class:
    input     a graph input that is not an initializer (a raw feature)
    constant  an initializer, or computed from constants only
    shape     computed from Shape or Size of a non-constant tensor (and from
              constants), so it depends on the graph inputs only through their shapes
    data      everything else: it depends on the values of the graph inputs

Nodes that output data are *data nodes*; they are what decomposition assigns to
components. Constant and shape nodes are recomputed by every component that
needs them, so they are never cut.

Per-row shapes come from running the model in onnxruntime on two all-zero probe
batches (2 and 3 rows): a tensor whose dim 0 follows the batch and whose other
dims stay put is *batched*, and its *width* is the product of its other dims.
Static shape inference alone is not enough: a legacy-exporter Reshape to
[batch, -1] infers as [batch, unk__0].
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from akfc.passes.flops import node_flops

__all__ = [
    "unique_name",
    "CONSTANT",
    "DATA",
    "INPUT",
    "LAYER_OPS",
    "SHAPE",
    "Dataflow",
    "TensorInfo",
    "analyze",
    "dtype_name",
    "node_input_names",
]

logger = logging.getLogger(__name__)

INPUT = "input"
CONSTANT = "constant"
SHAPE = "shape"
DATA = "data"

# Parameterised layers: a MatMul-like op with a constant weight operand, or an ai.onnx.ml predictor.
LAYER_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "MatMulInteger", "QLinearMatMul", "QLinearConv"})
_ML_PREDICTORS = frozenset(
    {
        "LinearClassifier", "LinearRegressor", "SVMClassifier", "SVMRegressor", "TreeEnsemble",
        "TreeEnsembleClassifier", "TreeEnsembleRegressor",
    }
)  # fmt: skip
_SHAPE_OPS = frozenset({"Shape", "Size"})
_FLOAT_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
    }
)  # fmt: skip
# Rows of the two probe batches; two sizes tell the batch axis apart from a dim that merely equals it.
_PROBE_BATCHES = (2, 3)
# Value used for symbolic non-batch dims of graph inputs during the probe.
# NOTE: a tensor whose size follows such a dim (a sequence length) gets its width from this one value.
# That width is wrong for other lengths. Tabular sources have no such dims.
_PROBE_OTHER_DIM = 2


def dtype_name(elem_type: int) -> str:
    """Return the lower-case ONNX name of a tensor element type, e.g. "float" or "int64"."""
    return onnx.TensorProto.DataType.Name(elem_type).lower()


@dataclass(frozen=True)
class TensorInfo:
    """Batch layout of one input or data tensor."""

    name: str
    elem_type: int  # onnx.TensorProto element type, 0 when unknown
    batched: bool  # dim 0 is the batch axis and every other dim is static
    row_shape: tuple[int, ...] | None  # the dims after the batch axis when batched

    @property
    def width(self) -> int | None:
        """Elements per row, or None for a tensor without a batch axis at dim 0."""
        return math.prod(self.row_shape) if self.row_shape is not None else None

    @property
    def dtype(self) -> str:
        return dtype_name(self.elem_type)


def node_input_names(node: onnx.NodeProto) -> tuple[str, ...]:
    """Return the node's non-empty inputs plus the outer-scope names its subgraphs read."""
    names = [name for name in node.input if name]
    for subgraph in _subgraphs(node):
        names.extend(name for name in _outer_scope_names(subgraph) if name not in names)
    return tuple(names)


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.g
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            yield from attribute.graphs


def _outer_scope_names(graph: onnx.GraphProto) -> list[str]:
    defined = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer}
    used: list[str] = []
    for node in graph.node:
        for name in node_input_names(node):
            if name not in defined and name not in used:
                used.append(name)
        defined.update(node.output)
    return used


@dataclass(frozen=True, eq=False)
class Dataflow:
    """Producers, consumers, tensor classes, per-row shapes and FLOPs of one model's main graph."""

    model: onnx.ModelProto
    nodes: tuple[onnx.NodeProto, ...]  # graph order, which the checker guarantees is topological
    node_inputs: tuple[tuple[str, ...], ...]  # per node: explicit and outer-scope inputs
    producer: Mapping[str, int]  # tensor -> index of the node that outputs it
    consumers: Mapping[str, tuple[int, ...]]  # tensor -> indices of the nodes that read it
    tensor_class: Mapping[str, str]  # tensor -> INPUT, CONSTANT, SHAPE or DATA
    inputs: tuple[str, ...]  # graph inputs that are not initializers
    outputs: tuple[str, ...]  # graph outputs
    initializers: Mapping[str, onnx.TensorProto]
    elem_types: Mapping[str, int]  # tensor -> element type where known
    tensors: Mapping[str, TensorInfo]  # input and data tensors
    probe_shapes: Mapping[str, tuple[tuple[int, ...], ...]]  # tensor -> concrete shape at each probe batch
    node_flops: tuple[int, ...]  # per node, FLOPs per row
    batch_dim: str | int  # the graph inputs' dim 0: a dim_param, or its value when static
    live: frozenset[int] = field(repr=False)  # nodes that some graph output depends on

    def is_data_node(self, index: int) -> bool:
        return any(self.tensor_class.get(name) == DATA for name in self.nodes[index].output)

    def data_inputs(self, index: int) -> tuple[str, ...]:
        """Return the input and data tensors a node reads (not its constants or shape tensors)."""
        if self.nodes[index].op_type in _SHAPE_OPS:
            return ()
        return tuple(name for name in self.node_inputs[index] if self.tensor_class.get(name) in (INPUT, DATA))

    def data_consumers(self, tensor: str) -> tuple[int, ...]:
        """Return the live data nodes that read tensor's values (Shape and Size read only its shape)."""
        return tuple(
            index
            for index in self.consumers.get(tensor, ())
            if index in self.live and self.is_data_node(index) and self.nodes[index].op_type not in _SHAPE_OPS
        )

    def data_producers(self, index: int) -> tuple[int, ...]:
        """Return the data nodes whose outputs this node reads."""
        return tuple(dict.fromkeys(self.producer[name] for name in self.data_inputs(index) if name in self.producer))

    def is_layer(self, index: int) -> bool:
        """Tell whether a node is a parameterised layer: a MatMul-like op with a constant weight, or an ML predictor."""
        node = self.nodes[index]
        if node.domain == "ai.onnx.ml":
            return node.op_type in _ML_PREDICTORS
        if node.domain not in ("", "ai.onnx") or node.op_type not in LAYER_OPS:
            return False
        operands = [self.tensor_class.get(name) for name in node.input[:2] if name]
        return CONSTANT in operands and (DATA in operands or INPUT in operands)

    def params(self, index: int) -> int:
        """Count the parameters a node reads: elements of floating-point constant inputs, or predictor attributes."""
        node = self.nodes[index]
        count = 0
        for name in node.input:
            tensor = self.initializers.get(name)
            if tensor is not None and tensor.data_type in _FLOAT_TYPES:
                count += math.prod(tensor.dims)
        if node.domain == "ai.onnx.ml":
            count += sum(len(attribute.floats) for attribute in node.attribute)
        return count


def _batch_dim(graph: onnx.GraphProto, inputs: tuple[str, ...]) -> str | int:
    by_name = {value.name: value for value in graph.input}
    for name in inputs:
        dims = by_name[name].type.tensor_type.shape.dim
        if dims:
            if dims[0].HasField("dim_value"):
                return int(dims[0].dim_value)
            return dims[0].dim_param or "batch"
    return "batch"


def _classify(
    nodes: tuple[onnx.NodeProto, ...],
    node_inputs: tuple[tuple[str, ...], ...],
    inputs: tuple[str, ...],
    initializers: Mapping[str, onnx.TensorProto],
) -> dict[str, str]:
    classes = {name: CONSTANT for name in initializers}
    classes.update({name: INPUT for name in inputs})
    for node, names in zip(nodes, node_inputs):
        seen = {classes.get(name, CONSTANT) for name in names}
        if node.op_type in _SHAPE_OPS and node.domain in ("", "ai.onnx"):
            result = CONSTANT if seen <= {CONSTANT} else SHAPE
        elif seen & {INPUT, DATA}:
            result = DATA
        elif SHAPE in seen:
            result = SHAPE
        else:
            result = CONSTANT
        for name in node.output:
            if name:
                classes[name] = result
    return classes


def _live_nodes(nodes: tuple[onnx.NodeProto, ...], node_inputs: tuple[tuple[str, ...], ...], outputs: tuple[str, ...]) -> frozenset[int]:
    producer = {name: index for index, node in enumerate(nodes) for name in node.output if name}
    live: set[int] = set()
    stack = [producer[name] for name in outputs if name in producer]
    while stack:
        index = stack.pop()
        if index in live:
            continue
        live.add(index)
        stack.extend(producer[name] for name in node_inputs[index] if name in producer)
    return frozenset(live)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = inferred.graph
    types = {tensor.name: tensor.data_type for tensor in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    types[node.output[0]] = attribute.t.data_type
    return types


def _probe_feed(value: onnx.ValueInfoProto, batch: int) -> np.ndarray:
    tensor_type = value.type.tensor_type
    dims = []
    for axis, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        else:
            dims.append(batch if axis == 0 else _PROBE_OTHER_DIM)
    if tensor_type.elem_type == onnx.TensorProto.STRING:
        return np.full(dims, "", dtype=object)
    return np.zeros(dims, dtype=onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))


def _probe(
    model: onnx.ModelProto, names: list[str], elem_types: Mapping[str, int], batches: tuple[int, ...]
) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Run the model on all-zero batches and return the concrete shape of each named tensor at each batch size."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    graph_outputs = {value.name for value in probe.graph.output}
    graph_inputs = {value.name for value in probe.graph.input}
    fetched = [name for name in names if name in elem_types and name not in graph_inputs]
    probe.graph.output.extend(
        onnx.helper.make_tensor_value_info(name, elem_types[name], None) for name in fetched if name not in graph_outputs
    )
    del probe.graph.value_info[:]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    initializers = {tensor.name for tensor in model.graph.initializer}
    real_inputs = [value for value in model.graph.input if value.name not in initializers]
    shapes: dict[str, list[tuple[int, ...]]] = {name: [] for name in fetched}
    for batch in batches:
        feeds = {value.name: _probe_feed(value, batch) for value in real_inputs}
        for value_name, array in feeds.items():
            shapes.setdefault(value_name, []).append(tuple(array.shape))
        results = session.run(fetched, feeds)
        for name, array in zip(fetched, results):
            shapes[name].append(tuple(np.shape(array)))
    return {name: tuple(found) for name, found in shapes.items() if len(found) == len(batches)}


def _static_shapes(model: onnx.ModelProto, batch_dim: str | int, batches: tuple[int, ...]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Fall back on static shape inference: substitute each probe batch for the batch dim, skip unknown dims."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if not value.type.tensor_type.HasField("shape"):
            continue
        per_batch = []
        for batch in batches:
            dims = []
            for dim in value.type.tensor_type.shape.dim:
                if dim.HasField("dim_value"):
                    dims.append(int(dim.dim_value))
                elif dim.dim_param and dim.dim_param == batch_dim:
                    dims.append(batch)
                else:
                    break
            else:
                per_batch.append(tuple(dims))
        if len(per_batch) == len(batches):
            shapes[value.name] = tuple(per_batch)
    return shapes


def _tensor_info(name: str, elem_type: int, shapes: tuple[tuple[int, ...], ...] | None, batches: tuple[int, ...]) -> TensorInfo:
    if shapes is None or any(len(shape) == 0 for shape in shapes):
        return TensorInfo(name, elem_type, False, None)
    rows = {shape[1:] for shape in shapes}
    batched = len(rows) == 1 and all(shape[0] == batch for shape, batch in zip(shapes, batches))
    return TensorInfo(name, elem_type, batched, shapes[0][1:] if batched else None)


def _flops_per_row(
    node: onnx.NodeProto, shapes: Mapping[str, tuple[tuple[int, ...], ...]], initializers: Mapping[str, onnx.TensorProto], batches: tuple[int, ...]
) -> int:
    def shape_at(position: int):
        def shape_of(name: str) -> tuple[int, ...] | None:
            if name in shapes:
                return shapes[name][position]
            if name in initializers:
                return tuple(initializers[name].dims)
            return None

        return shape_of

    counts = [node_flops(node, shape_at(position)) for position in range(len(batches))]
    if len(counts) == 1:
        return counts[0] // batches[0]
    # FLOPs grow linearly with the batch; the difference between the probes is the cost of one row.
    return max(0, (counts[1] - counts[0]) // (batches[1] - batches[0]))


def analyze(model: onnx.ModelProto) -> Dataflow:
    """Analyse a model's main graph: classes, per-row shapes and FLOPs of its tensors and nodes.

    The model is not modified. Shapes come from an onnxruntime probe. When the
    probe fails (an input type it cannot fill, an op the CPU provider lacks),
    static shape inference is used instead and a warning is logged.
    """
    graph = model.graph
    nodes = tuple(graph.node)
    node_inputs = tuple(node_input_names(node) for node in nodes)
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    inputs = tuple(value.name for value in graph.input if value.name not in initializers)
    outputs = tuple(value.name for value in graph.output)
    producer = {name: index for index, node in enumerate(nodes) for name in node.output if name}
    consumers: dict[str, list[int]] = {}
    for index, names in enumerate(node_inputs):
        for name in names:
            consumers.setdefault(name, []).append(index)
    tensor_class = _classify(nodes, node_inputs, inputs, initializers)
    live = _live_nodes(nodes, node_inputs, outputs)
    batch_dim = _batch_dim(graph, inputs)
    elem_types = _elem_types(model)

    # probe shapes of every input and data tensor
    batches = (batch_dim,) if isinstance(batch_dim, int) else _PROBE_BATCHES
    value_tensors = [name for name, kind in tensor_class.items() if kind in (INPUT, DATA)]
    try:
        probe_shapes = _probe(model, value_tensors, elem_types, batches)
    except Exception as error:  # noqa: BLE001 -- any runtime failure only costs precision, so fall back and say so
        logger.warning("probe run of the model failed (%s); falling back on static shape inference", error)
        probe_shapes = _static_shapes(model, batch_dim, batches)

    tensors = {
        name: _tensor_info(name, elem_types.get(name, 0), probe_shapes.get(name), batches)
        for name in value_tensors
    }
    flops = tuple(
        _flops_per_row(node, probe_shapes, initializers, batches)
        if any(tensor_class.get(name) == DATA for name in node.output if name)
        else 0
        for node in nodes
    )
    return Dataflow(
        model=model,
        nodes=nodes,
        node_inputs=node_inputs,
        producer=producer,
        consumers={name: tuple(indices) for name, indices in consumers.items()},
        tensor_class=tensor_class,
        inputs=inputs,
        outputs=outputs,
        initializers=initializers,
        elem_types=elem_types,
        tensors=tensors,
        probe_shapes=probe_shapes,
        node_flops=flops,
        batch_dim=batch_dim,
        live=live,
    )


def unique_name(name: str, taken: set[str]) -> str:
    """Return `name`, or `name_1`, `name_2`, ... if taken; the result is added to `taken`."""
    candidate, counter = name, 1
    while candidate in taken:
        candidate = f"{name}_{counter}"
        counter += 1
    taken.add(candidate)
    return candidate
