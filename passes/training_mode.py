"""Reject sources exported in training mode.

A model exported without ``model.eval()`` may keep BatchNormalization in
training mode, which normalises each batch with its own mean and variance, so
a row's output depends on the other rows of its batch. It may also keep
Dropout in training mode, which zeroes random values on every run. Neither
computes what the trained model predicts, so fusing such a source would give
wrong results without any error.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx.numpy_helper

from akfc.errors import ModelError

__all__ = ["check_inference_mode"]

logger = logging.getLogger(__name__)

_EVAL_HINT = "export the model in eval mode: call model.eval() before torch.onnx.export"


def check_inference_mode(model: onnx.ModelProto, *, origin: str = "model") -> None:
    """Raise when a BatchNormalization or Dropout node of the main graph runs in training mode.

    BatchNormalization is in training mode when its training_mode attribute
    is 1 or it writes the running mean and variance outputs. Dropout is in
    training mode unless its training_mode input is absent or a constant
    false (an initializer or a Constant node). The model is not modified.

    Raises:
        ModelError: naming the node, its output tensor, the source and the fix.
    """
    graph = model.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    graph_inputs = {value.name for value in graph.input} - set(constants)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = next((attribute.t for attribute in node.attribute if attribute.name == "value"), None)
            if value is not None:
                constants[node.output[0]] = value
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "BatchNormalization":
            _check_batch_normalization(node, origin)
        elif node.op_type == "Dropout":
            _check_dropout(node, constants, graph_inputs, origin)
    logger.debug("%s: no BatchNormalization or Dropout node in training mode", origin)


def _label(node: onnx.NodeProto) -> str:
    label = f"node {node.name!r}" if node.name else "unnamed node"
    return f"{label} ({node.op_type}, output {node.output[0]!r})"


def _check_batch_normalization(node: onnx.NodeProto, origin: str) -> None:
    training = any(attribute.name == "training_mode" and attribute.i for attribute in node.attribute)
    statistics = [name for name in node.output[1:] if name]
    if not training and not statistics:
        return
    reason = "training_mode=1" if training else f"it writes the running statistics {', '.join(map(repr, statistics))}"
    raise ModelError(
        f"{origin}: {_label(node)} is in training mode ({reason}): it normalises each batch with that batch's own mean "
        f"and variance, so a row's output depends on the other rows; {_EVAL_HINT}"
    )


def _check_dropout(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto], graph_inputs: set[str], origin: str) -> None:
    if len(node.input) < 3 or not node.input[2]:
        return
    flag = node.input[2]
    if flag in constants:
        if not np.any(onnx.numpy_helper.to_array(constants[flag])):
            return
        reason = f"its training_mode input {flag!r} is true"
    elif flag in graph_inputs:
        reason = f"its training_mode input is the graph input {flag!r}, not a constant false"
    else:
        reason = f"its training_mode input {flag!r} is computed in the graph, not a constant false"
    raise ModelError(f"{origin}: {_label(node)} is in training mode ({reason}), so it zeroes random values on every run; {_EVAL_HINT}")
