"""Element types and ranks of a graph's tensors, for the op lowerings that depend on them.

ONNX shape inference gives most of them. It loses the rank after a Reshape
whose shape vector it cannot follow (the legacy exporter's
Shape -> Gather -> Div -> Concat chains), while code generation does follow
such vectors (see values.Dims). So lowering records what it finds out (shape
vector lengths, reshape ranks, folded constants). When an op later requests
a rank that is still unknown, inference runs again with those facts added as
value_info.
"""

from __future__ import annotations

import logging

import onnx
from onnx import TensorProto

from akfc.errors import ModelError

__all__ = ["TypeTable"]

logger = logging.getLogger(__name__)

# Integer initializers up to this many elements stay in the inference copy of
# the graph, because inference reads shapes and axes from them. Larger ones and
# all float ones become typed inputs, so re-running inference copies no weights.
_KEPT_INITIALIZER_SIZE = 64
_INTEGER_TYPES = frozenset({TensorProto.INT64, TensorProto.INT32})


class TypeTable:
    """Element type and rank of every tensor name, refined as lowering goes."""

    def __init__(self, model: onnx.ModelProto, source: str) -> None:
        self._source = source
        self._skeleton = _skeleton(model)
        # name -> (element type, shape with None for unknown sizes) learnt while lowering
        self._facts: dict[str, tuple[int, list[int | None]]] = {}
        self._stale = False
        self._types = self._infer()

    def elem_type(self, name: str) -> int | None:
        entry = self._types.get(name)
        return entry[0] if entry and entry[0] else None

    def rank(self, name: str) -> int | None:
        entry = self._types.get(name)
        if (entry is None or entry[1] is None) and self._stale:
            self._types = self._infer()
            self._stale = False
            entry = self._types.get(name)
        return entry[1] if entry else None

    def record(self, name: str, elem_type: int | None, shape: list[int | None]) -> None:
        """Note a tensor's shape found while lowering, when inference did not know its rank."""
        entry = self._types.get(name)
        if entry is not None and entry[1] is not None:
            return
        elem_type = elem_type or (entry[0] if entry else 0)
        if not elem_type:
            return
        self._facts[name] = (elem_type, shape)
        self._stale = True

    def _infer(self) -> dict[str, tuple[int, int | None]]:
        model = onnx.ModelProto()
        model.CopyFrom(self._skeleton)
        for name, (elem_type, shape) in self._facts.items():
            model.graph.value_info.append(onnx.helper.make_tensor_value_info(name, elem_type, shape))
        try:
            inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as error:
            raise ModelError(f"{self._source}: ONNX shape inference failed: {error}") from error
        types: dict[str, tuple[int, int | None]] = {}
        graph = inferred.graph
        for value_info in (*graph.input, *graph.value_info, *graph.output):
            if not value_info.type.HasField("tensor_type"):
                continue
            tensor_type = value_info.type.tensor_type
            rank = len(tensor_type.shape.dim) if tensor_type.HasField("shape") else None
            types[value_info.name] = (tensor_type.elem_type, rank)
        for initializer in self._skeleton.graph.initializer:
            types[initializer.name] = (initializer.data_type, len(initializer.dims))
        if self._facts:
            logger.debug("%s: shape inference re-run with %d recorded shapes", self._source, len(self._facts))
        return types


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy the model without its weights: large or float initializers become typed inputs."""
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    graph = skeleton.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    initializer_names = {initializer.name for initializer in model.graph.initializer}
    graph.input.extend(graph_input for graph_input in model.graph.input if graph_input.name not in initializer_names)
    for initializer in model.graph.initializer:
        size = 1
        for dim in initializer.dims:
            size *= dim
        if initializer.data_type in _INTEGER_TYPES and size <= _KEPT_INITIALIZER_SIZE:
            graph.initializer.append(initializer)
        else:
            graph.input.append(
                onnx.helper.make_tensor_value_info(initializer.name, initializer.data_type, list(initializer.dims))
            )
    return skeleton
