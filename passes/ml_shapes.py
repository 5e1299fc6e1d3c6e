"""Shapes for ai.onnx.ml ops that ONNX shape inference leaves untyped."""

from __future__ import annotations

import onnx

__all__ = ["SHAPE_KEEPING_ML_OPS", "complete_ml_shapes"]

# ai.onnx.ml ops whose output has the input's shape and is always float.
SHAPE_KEEPING_ML_OPS = frozenset({"Scaler", "Normalizer", "Imputer", "Binarizer"})


def complete_ml_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy with value_info for the outputs of shape-keeping ai.onnx.ml ops, which ONNX shape inference skips.

    Without them every tensor after a skl2onnx StandardScaler has unknown
    rank, and neither pruning nor frontier widths can work there.
    """
    completed = onnx.ModelProto()
    completed.CopyFrom(model)
    while True:
        inferred = onnx.shape_inference.infer_shapes(completed)
        graph = inferred.graph
        shaped = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output] if v.type.tensor_type.HasField("shape")}
        added = []
        for node in completed.graph.node:
            if node.domain == "ai.onnx.ml" and node.op_type in SHAPE_KEEPING_ML_OPS and node.output[0] not in shaped and node.input[0] in shaped:
                value = onnx.ValueInfoProto()
                value.CopyFrom(shaped[node.input[0]])
                value.name = node.output[0]
                value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT  # these ops always output float
                added.append(value)
        if not added:
            return completed
        completed.graph.value_info.extend(added)
