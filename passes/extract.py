"""Extract components of a decomposition as standalone ONNX models, and run them in sequence.

An extracted component's graph inputs are exactly its input tensors (the
source's graph inputs for the stem, else the previous frontier) and its graph
outputs are exactly its output tensors, with the batch dim symbolic as in the
source. It contains its own nodes, the initializers they read and copies of the
constant and shape nodes they need. A shape node that reads a tensor the
component does not have is rebuilt from the batch dim of one of its inputs,
which is exact because every tensor it can read has its batch axis at dim 0
and static other dims.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from akfc.errors import ModelError
from akfc.passes._checks import check_emitted
from akfc.passes.dataflow import CONSTANT, DATA, INPUT, SHAPE, Dataflow, node_input_names
from akfc.passes.decompose import Component, Decomposition, TensorSpec

__all__ = ["extract_component", "extract_components", "run_components"]

logger = logging.getLogger(__name__)

_SHAPE_OPS = ("Shape", "Size")


def extract_components(model: onnx.ModelProto, decomposition: Decomposition) -> list[onnx.ModelProto]:
    """Extract every component of ``decomposition`` in order: stem, blocks 1..L, head."""
    return [extract_component(model, decomposition, component) for component in decomposition.components]


def extract_component(model: onnx.ModelProto, decomposition: Decomposition, component: Component | str) -> onnx.ModelProto:
    """Build a standalone model that computes one component; ``model`` is the one decomposed and is not modified.

    The result passes the full ONNX checker and strict shape inference, uses
    the source's opset and IR version, and records the component's name in
    the ``akfc.component`` metadata entry.
    """
    flow = decomposition.dataflow
    if flow.model is not model and [node.name for node in flow.model.graph.node] != [node.name for node in model.graph.node]:
        raise ValueError("the decomposition was computed for a different model")
    if isinstance(component, str):
        component = decomposition.component(component)

    index_of = {node.name: index for index, node in enumerate(flow.nodes)}
    owned = [index_of[name] for name in component.nodes]
    input_names = [spec.name for spec in component.inputs]
    available = set(input_names) | {name for index in owned for name in flow.nodes[index].output if name}

    # 1. every value a node reads must come from the component's inputs or its own nodes
    for index in owned:
        for name in flow.data_inputs(index):
            if name not in available:
                raise ModelError(
                    f"{component.name}: node {flow.nodes[index].name!r} reads {name!r}, which is neither an input nor "
                    "computed in the component; the decomposition does not match the model"
                )
    for spec in component.outputs:
        if spec.name not in available:
            raise ModelError(f"{component.name}: output {spec.name!r} is neither an input nor computed in the component")

    # 2. constant and shape nodes the component needs, and the initializers everything reads
    recomputed, rebuilt = _needed_support_nodes(flow, owned, available)
    selected = sorted(set(owned) | recomputed | rebuilt)
    reference = _batch_reference(flow, component)
    nodes: list[onnx.NodeProto] = []
    for index in selected:
        if index in rebuilt:
            nodes.extend(_rebuild_shape_node(flow, flow.nodes[index], reference, component.name))
        else:
            nodes.append(flow.nodes[index])
    used = {name for node in nodes for name in _all_inputs(node)}
    initializers = [tensor for name, tensor in flow.initializers.items() if name in used]

    # 3. the model
    graph = onnx.helper.make_graph(
        nodes=nodes,
        name=f"{flow.model.graph.name or 'model'}_{component.name}",
        inputs=[_value_info(flow, spec, is_input=True) for spec in component.inputs],
        outputs=[_value_info(flow, spec, is_input=False) for spec in component.outputs],
        initializer=initializers,
    )
    extracted = onnx.helper.make_model(
        graph,
        opset_imports=list(flow.model.opset_import),
        producer_name=flow.model.producer_name,
        producer_version=flow.model.producer_version,
    )
    extracted.ir_version = flow.model.ir_version
    onnx.helper.set_model_props(extracted, {"akfc.component": component.name})
    checked = check_emitted(extracted, f"extract of component {component.name}")
    logger.debug("extracted %s: %d nodes (%d recomputed), %d initializers", component.name, len(nodes), len(recomputed) + len(rebuilt), len(initializers))
    return checked


def run_components(
    components: Sequence[onnx.ModelProto],
    feeds: Mapping[str, np.ndarray],
    *,
    optimize: bool = False,
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Run components in order in onnxruntime, each on the tensors computed so far; return all tensors by name.

    ``optimize`` turns onnxruntime's graph optimisations on; off, a chain of
    components reproduces the source bit for bit.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    values = dict(feeds)
    for component in components:
        session = ort.InferenceSession(component.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [value.name for value in session.get_inputs()]
        missing = [name for name in names if name not in values]
        if missing:
            raise KeyError(f"component inputs {missing} are not computed by the components before it nor given in feeds")
        results = session.run(None, {name: values[name] for name in names})
        values.update(zip((value.name for value in session.get_outputs()), results))
    return values


def _all_inputs(node: onnx.NodeProto) -> list[str]:
    return list(node_input_names(node))


def _needed_support_nodes(flow: Dataflow, owned: list[int], available: set[str]) -> tuple[set[int], set[int]]:
    """Return the constant and shape nodes to copy, and the shape nodes to rebuild from the batch dim."""
    recomputed: set[int] = set()
    rebuilt: set[int] = set()
    stack = [name for index in owned for name in _all_inputs(flow.nodes[index])]
    while stack:
        name = stack.pop()
        if flow.tensor_class.get(name) not in (CONSTANT, SHAPE) or name not in flow.producer:
            continue
        index = flow.producer[name]
        if index in recomputed or index in rebuilt:
            continue
        node = flow.nodes[index]
        if node.op_type in _SHAPE_OPS and node.domain in ("", "ai.onnx"):
            source = node.input[0]
            if flow.tensor_class.get(source) in (INPUT, DATA) and source not in available:
                rebuilt.add(index)
                continue
        recomputed.add(index)
        stack.extend(_all_inputs(node))
    return recomputed, rebuilt


def _batch_reference(flow: Dataflow, component: Component) -> str | None:
    """Return an input of the component whose dim 0 is the batch axis."""
    for spec in component.inputs:
        info = flow.tensors.get(spec.name)
        if info is not None and info.batched:
            return spec.name
    return None


def _rebuild_shape_node(flow: Dataflow, node: onnx.NodeProto, reference: str | None, component: str) -> list[onnx.NodeProto]:
    """Recompute Shape(x) or Size(x) of a tensor the component lacks from the batch dim of ``reference``."""
    source = node.input[0]
    info = flow.tensors.get(source)
    if info is None or not info.batched or info.row_shape is None or reference is None:
        raise ModelError(
            f"{component}: node {node.name!r} reads the shape of {source!r}, which the component does not have, and "
            "that shape cannot be rebuilt from a batch axis; name frontiers that keep the tensor in this component"
        )
    rank = 1 + len(info.row_shape)
    dims: list[int | None] = [None, *info.row_shape]  # None marks the batch dim
    prefix = f"{node.name}/rebuilt"
    batch = f"{prefix}/batch"
    nodes = [onnx.helper.make_node("Shape", [reference], [batch], name=f"{prefix}/Shape", start=0, end=1)]

    if node.op_type == "Size":
        rest = onnx.helper.make_tensor(f"{prefix}/rest", onnx.TensorProto.INT64, [], [int(np.prod(info.row_shape, dtype=np.int64))])
        axes = onnx.helper.make_tensor(f"{prefix}/axes", onnx.TensorProto.INT64, [1], [0])
        nodes += [
            onnx.helper.make_node("Constant", [], [f"{prefix}/rest"], name=f"{prefix}/Constant", value=rest),
            onnx.helper.make_node("Constant", [], [f"{prefix}/axes"], name=f"{prefix}/Axes", value=axes),
            onnx.helper.make_node("Squeeze", [batch, f"{prefix}/axes"], [f"{prefix}/rows"], name=f"{prefix}/Squeeze"),
            onnx.helper.make_node("Mul", [f"{prefix}/rows", f"{prefix}/rest"], [node.output[0]], name=f"{prefix}/Mul"),
        ]
        return nodes

    attributes = {attribute.name: attribute.i for attribute in node.attribute}
    start, end = attributes.get("start", 0), attributes.get("end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    wanted = dims[start:end]
    static = [int(dim) for dim in wanted if dim is not None]
    static_tensor = onnx.helper.make_tensor(f"{prefix}/static", onnx.TensorProto.INT64, [len(static)], static)
    if not wanted or wanted[0] is not None:
        return [onnx.helper.make_node("Constant", [], [node.output[0]], name=f"{prefix}/Constant", value=static_tensor)]
    if not static:
        nodes[0].output[0] = node.output[0]
        return nodes
    nodes += [
        onnx.helper.make_node("Constant", [], [f"{prefix}/static"], name=f"{prefix}/Constant", value=static_tensor),
        onnx.helper.make_node("Concat", [batch, f"{prefix}/static"], [node.output[0]], name=f"{prefix}/Concat", axis=0),
    ]
    return nodes


def _value_info(flow: Dataflow, spec: TensorSpec, *, is_input: bool) -> onnx.ValueInfoProto:
    # Graph inputs and outputs of the source keep their declared types; frontier tensors get [batch, row dims].
    declared = flow.model.graph.input if is_input else flow.model.graph.output
    for value in declared:
        if value.name == spec.name:
            copied = onnx.ValueInfoProto()
            copied.CopyFrom(value)
            return copied
    elem_type = flow.elem_types.get(spec.name, 0)
    shape = [dim if dim != "?" else None for dim in spec.shape]
    return onnx.helper.make_tensor_value_info(spec.name, elem_type, shape)
