"""FLOPs of ONNX nodes from concrete tensor shapes.

Counting rules (one multiply-add is two FLOPs):
    MatMul, Gemm, Einsum       2 * output elements * contracted length (+ output elements for Gemm's C)
    Conv, ConvTranspose        2 * output elements * input channels per group * kernel size (+ bias)
    reductions, Softmax, norms one per input element
    data movement              zero: Reshape, Transpose, Gather, Concat, Slice, Cast, Shape and the like
    everything else            one per output element

``node_flops`` counts one node at the shapes it is given; ``analyze`` in
``akfc.passes.dataflow`` turns two probe batches into FLOPs per row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import onnx

__all__ = ["DATA_MOVEMENT_OPS", "node_flops"]

ShapeOf = Callable[[str], Sequence[int] | None]

DATA_MOVEMENT_OPS = frozenset(
    {
        "Cast", "CastLike", "Compress", "Concat", "Constant", "ConstantOfShape", "DepthToSpace", "Dropout",
        "Expand", "EyeLike", "Flatten", "Gather", "GatherElements", "GatherND", "Identity", "NonZero", "OneHot",
        "Pad", "Range", "Reshape", "ScatterElements", "ScatterND", "Shape", "Size", "Slice", "SpaceToDepth",
        "Split", "Squeeze", "Tile", "Transpose", "Unsqueeze", "ZipMap",
    }
)  # fmt: skip

_PER_INPUT_ELEMENT_OPS = frozenset(
    {
        "ArgMax", "ArgMin", "BatchNormalization", "GroupNormalization", "InstanceNormalization",
        "LayerNormalization", "LogSoftmax", "LpNormalization", "ReduceL1", "ReduceL2", "ReduceLogSum",
        "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
        "Softmax", "TopK",
    }
)  # fmt: skip


def _elements(shape: Sequence[int] | None) -> int:
    return math.prod(shape) if shape is not None else 0


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return int(attribute.i)
    return default


def _matmul_flops(node: onnx.NodeProto, shape_of: ShapeOf) -> int:
    left, output = shape_of(node.input[0]), shape_of(node.output[0])
    if left is None or output is None or len(left) == 0:
        return 0
    return 2 * _elements(output) * left[-1]


def _gemm_flops(node: onnx.NodeProto, shape_of: ShapeOf) -> int:
    left, output = shape_of(node.input[0]), shape_of(node.output[0])
    if left is None or output is None or len(left) != 2:
        return 0
    contracted = left[0] if _attribute(node, "transA", 0) else left[1]
    bias = _elements(output) if len(node.input) > 2 and node.input[2] else 0
    return 2 * _elements(output) * contracted + bias


def _conv_flops(node: onnx.NodeProto, shape_of: ShapeOf) -> int:
    data, weight, output = shape_of(node.input[0]), shape_of(node.input[1]), shape_of(node.output[0])
    if data is None or weight is None or output is None:
        return 0
    group = _attribute(node, "group", 1)
    kernel = math.prod(weight[2:])
    if node.op_type == "ConvTranspose":
        # Every input element is scattered over a kernel for each output channel of its group.
        flops = 2 * _elements(data) * (weight[1]) * kernel
    else:
        flops = 2 * _elements(output) * (data[1] // group) * kernel
    bias = _elements(output) if len(node.input) > 2 and node.input[2] else 0
    return flops + bias


def _einsum_flops(node: onnx.NodeProto, shape_of: ShapeOf) -> int:
    # Two-operand contraction: every output element sums over the labels that appear only in the inputs.
    equation = next((attribute.s.decode() for attribute in node.attribute if attribute.name == "equation"), "")
    operands, _, result = equation.replace(" ", "").partition("->")
    terms = operands.split(",")
    shapes = [shape_of(name) for name in node.input]
    output = shape_of(node.output[0])
    if output is None or any(shape is None for shape in shapes) or "..." in equation or len(terms) != len(shapes):
        return _elements(output)
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, shapes):
        for label, size in zip(term, shape or ()):
            sizes[label] = size
    contracted = math.prod(size for label, size in sizes.items() if label not in result)
    return 2 * _elements(output) * contracted


def node_flops(node: onnx.NodeProto, shape_of: ShapeOf) -> int:
    """Count the FLOPs of one node; ``shape_of`` gives the concrete shape of a tensor, or None when unknown."""
    op_type = node.op_type
    if node.domain not in ("", "ai.onnx") or op_type in DATA_MOVEMENT_OPS:
        return 0
    if op_type in ("MatMul", "MatMulInteger", "FusedMatMul"):
        return _matmul_flops(node, shape_of)
    if op_type == "Gemm":
        return _gemm_flops(node, shape_of)
    if op_type in ("Conv", "ConvTranspose"):
        return _conv_flops(node, shape_of)
    if op_type == "Einsum":
        return _einsum_flops(node, shape_of)
    if op_type in _PER_INPUT_ELEMENT_OPS:
        return _elements(shape_of(node.input[0]))
    return sum(_elements(shape_of(name)) for name in node.output if name)
