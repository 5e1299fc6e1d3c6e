"""Valid id ranges of integer graph inputs that index embedding tables."""

from __future__ import annotations

import onnx

from akfc.passes.dataflow import node_input_names

__all__ = ["embedding_limits"]

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
