"""Give [batch] task outputs a class axis, so every source's output and logit have the [batch, C] shape fusion mixes.

Some exporters end a binary or regression model with a squeeze: torch-rechub's
ranking models (0.9.0) return ``sigmoid(y.squeeze(1))``, a [batch] tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx
import onnx.numpy_helper

from akfc.errors import ModelError
from akfc.passes._checks import check_emitted
from akfc.passes.dataflow import unique_name

__all__ = ["add_class_axis"]

logger = logging.getLogger(__name__)


def _rank(model: onnx.ModelProto, tensor: str) -> int:
    inferred = onnx.shape_inference.infer_shapes(model)
    for value in [*inferred.graph.output, *inferred.graph.value_info]:
        if value.name == tensor and value.type.tensor_type.HasField("shape"):
            return len(value.type.tensor_type.shape.dim)
    raise ModelError(f"cannot infer the rank of graph output {tensor!r}; export the model with output shapes")


def add_class_axis(model: onnx.ModelProto, outputs: Sequence[str]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Replace each rank-1 graph output among `outputs` by an Unsqueeze of it to [batch, 1]; the input model is not modified.

    Nodes, initializers and graph inputs stay as they are; only Unsqueeze nodes
    and their axes initializer are added. Returns the model and, for every name
    in `outputs`, the graph output that now contains it (the same name when its
    rank was already 2 or more).
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    renamed = {name: name for name in outputs}
    flat = [name for name in dict.fromkeys(outputs) if _rank(model, name) == 1]
    if not flat:
        return result, renamed

    taken = {name for node in graph.node for name in node.output} | {i.name for i in graph.initializer} | {i.name for i in graph.input}
    axes = unique_name("class_axis", taken)
    graph.initializer.append(onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), axes))
    for name in flat:
        column = unique_name(f"{name}_column", taken)
        graph.node.append(onnx.helper.make_node("Unsqueeze", [name, axes], [column], name=unique_name(f"{name}_Unsqueeze", taken)))
        position = next(i for i, value in enumerate(graph.output) if value.name == name)
        value = graph.output[position]
        elem_type = value.type.tensor_type.elem_type
        batch = value.type.tensor_type.shape.dim[0] if value.type.tensor_type.HasField("shape") and value.type.tensor_type.shape.dim else None
        batch_dim = (batch.dim_param or batch.dim_value or None) if batch is not None else None
        graph.output[position].CopyFrom(onnx.helper.make_tensor_value_info(column, elem_type, [batch_dim, 1]))
        renamed[name] = column
    logger.info("added a class axis to %d [batch] output(s): %s", len(flat), ", ".join(flat))
    return check_emitted(result, "add_class_axis"), renamed
