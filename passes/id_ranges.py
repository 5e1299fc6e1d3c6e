"""Valid id ranges of integer graph inputs that index embedding tables, and a guard that keeps ids inside them."""

from __future__ import annotations

import logging

import numpy as np
import onnx

from akfc.passes._checks import check_emitted
from akfc.passes.dataflow import node_input_names, unique_name

__all__ = ["embedding_limits", "guard_ids"]

logger = logging.getLogger(__name__)

# Ops that move or retype ids without changing their values.
_PASSIVE_OPS = frozenset({"Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten"})
_INTEGER_TYPES = frozenset({
    onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
    onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64,
})  # fmt: skip


def embedding_limits(model: onnx.ModelProto) -> dict[str, int]:
    """Map each integer graph input that indexes an initializer table (Gather on axis 0) to that table's row count.

    Ids must lie in [0, limit): onnxruntime rejects larger ones on CPU and,
    on CUDA, may return garbage for them without an error. An input that
    indexes several tables gets the smallest row count. Inputs reaching a
    Gather only through ops that change values (Add, Mul, ...) are not
    followed, so their ranges are not checked. The model is not modified.
    """
    graph = model.graph
    tables = {init.name: int(init.dims[0]) for init in graph.initializer if len(init.dims) >= 1}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node_input_names(node):
            consumers.setdefault(name, []).append(node)

    limits: dict[str, int] = {}
    for value in graph.input:
        if value.name in tables or value.type.tensor_type.elem_type not in _INTEGER_TYPES:
            continue
        frontier, seen = [value.name], set()
        while frontier:
            tensor = frontier.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            for node in consumers.get(tensor, []):
                if node.domain not in ("", "ai.onnx"):
                    continue
                if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == tensor and node.input[0] in tables:
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    if axis == 0:
                        limits[value.name] = min(limits.get(value.name, tables[node.input[0]]), tables[node.input[0]])
                elif node.op_type in _PASSIVE_OPS and node.input and node.input[0] == tensor:
                    frontier.extend(name for name in node.output if name)
    return limits


def guard_ids(model: onnx.ModelProto, *, namespace: str = "guard") -> onnx.ModelProto:
    """Insert a guard after each graph input that `embedding_limits` finds, so ids outside [0, limit) become 0.

    Serving stacks that call onnxruntime directly then get the output of id 0
    (the unknown id) for such rows, where without the guard onnxruntime raises
    on CPU and may return garbage on CUDA. Per guarded input the pass adds
    Less, GreaterOrEqual, Or and Where nodes named `<namespace>/<input>/<op>`
    and two scalar initializers, and every node that read the input reads the
    guarded tensor instead. Graph inputs, graph outputs and all other nodes
    stay as they are, and a model without such inputs comes back unchanged.
    Guarded inputs no longer reach a Gather through passive ops only, so
    `embedding_limits` of the result does not list them. The input model is
    not modified.
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    limits = embedding_limits(model)
    if not limits:
        return result
    graph = result.graph
    used_names = (
        {name for node in graph.node for name in node.output}
        | {init.name for init in graph.initializer}
        | {value.name for value in graph.input}
        | {node.name for node in graph.node if node.name}
    )

    guards: list[onnx.NodeProto] = []
    for value in graph.input:
        if value.name not in limits:
            continue
        name, limit = value.name, limits[value.name]
        prefix = f"{namespace}/{name}"
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        zero, rows = unique_name(f"{prefix}/zero", used_names), unique_name(f"{prefix}/rows", used_names)
        graph.initializer.append(onnx.numpy_helper.from_array(np.array(0, dtype=dtype), zero))
        graph.initializer.append(onnx.numpy_helper.from_array(np.array(limit, dtype=dtype), rows))
        below, above, outside, guarded = (unique_name(f"{prefix}/{part}", used_names) for part in ("below", "above", "outside", "guarded"))
        # Readers are renamed before the guard's nodes exist, so only the guard itself still reads the raw input.
        _rename_reads(graph, name, guarded)
        guards += [
            onnx.helper.make_node("Less", [name, zero], [below], name=unique_name(f"{prefix}/Less", used_names)),
            onnx.helper.make_node("GreaterOrEqual", [name, rows], [above], name=unique_name(f"{prefix}/GreaterOrEqual", used_names)),
            onnx.helper.make_node("Or", [below, above], [outside], name=unique_name(f"{prefix}/Or", used_names)),
            onnx.helper.make_node("Where", [outside, zero, name], [guarded], name=unique_name(f"{prefix}/Where", used_names)),
        ]

    # The guards read graph inputs only, so putting them first keeps the node list topologically sorted.
    nodes = [*guards, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    logger.info("guarded %d id input(s): %s", len(limits), ", ".join(f"{name} in [0, {limit})" for name, limit in limits.items()))
    check_emitted(result, "guard_ids")
    return result


def _rename_reads(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Make every node that reads `old` read `new`, inside subgraphs too unless a subgraph defines `old` itself.

    A graph output named `old` keeps its name: it is the input passed through, and the interface must not change.
    """
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name == old:
                node.input[position] = new
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                subgraphs = [attribute.g]
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                subgraphs = list(attribute.graphs)
            else:
                continue
            for subgraph in subgraphs:
                defined = {v.name for v in subgraph.input} | {i.name for i in subgraph.initializer} | {o for n in subgraph.node for o in n.output}
                if old not in defined:
                    _rename_reads(subgraph, old, new)
