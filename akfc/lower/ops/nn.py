"""Normalisations and softmax."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import onnx
import torch
import torch.nn.functional as F

from akfc.lower import runtime
from akfc.lower.dtypes import to_torch_dtype
from akfc.lower.registry import register

if TYPE_CHECKING:
    from akfc.lower.codegen import NodeContext

__all__: list[str] = []


@register("Softmax", (13,))
def _softmax(ctx: NodeContext) -> list[Any]:
    return [ctx.call(torch.softmax, ctx.tensor(0), ctx.attr("axis", -1))]


@register("LogSoftmax", (13,))
def _log_softmax(ctx: NodeContext) -> list[Any]:
    return [ctx.call(torch.log_softmax, ctx.tensor(0), ctx.attr("axis", -1))]


@register(
    "BatchNormalization",
    (9, 14, 15),
    limits="inference only: training_mode=1 and the training statistics outputs are rejected",
)
def _batch_normalization(ctx: NodeContext) -> list[Any]:
    if ctx.attr("training_mode", 0):
        ctx.fail(
            "attribute training_mode=1 (batch statistics) is not supported: components are lowered for "
            "inference with their running statistics; export the model in eval mode"
        )
    if any(ctx.output_used(index) for index in range(1, ctx.num_outputs)):
        ctx.fail("the running or saved statistics outputs exist only in training and are not supported")
    x = ctx.tensor(0)
    x_dtype = ctx.dtype(0)
    # BatchNormalization-15 lets scale/bias and mean/var have their own float types.
    parameters = []
    for index in (1, 2, 3, 4):
        operand = ctx.tensor(index)
        if x_dtype is not None and ctx.dtype(index) not in (None, x_dtype):
            operand = ctx.method("to", operand, x_dtype)
        parameters.append(operand)
    scale, bias, mean, var = parameters
    epsilon = ctx.attr("epsilon", 1e-5)
    if ctx.is_frozen(3) and ctx.is_frozen(4):
        return [ctx.call(F.batch_norm, x, mean, var, scale, bias, False, 0.0, epsilon)]
    # torch's kernel refuses gradients for the running statistics; these need them.
    return [ctx.call(runtime.batch_norm, x, scale, bias, mean, var, epsilon)]


@register("LayerNormalization", (17,))
def _layer_normalization(ctx: NodeContext) -> list[Any]:
    axis, epsilon = ctx.attr("axis", -1), ctx.attr("epsilon", 1e-5)
    stash_type = ctx.attr("stash_type", onnx.TensorProto.FLOAT)
    stash_dtype = to_torch_dtype(stash_type)
    if stash_dtype is None or not stash_dtype.is_floating_point:
        ctx.fail(f"attribute stash_type={stash_type} is not a floating-point type torch has")
    x, scale, bias = ctx.tensor(0), ctx.tensor(1), ctx.tensor(2)
    rank = ctx.rank(0)
    wants_statistics = ctx.output_used(1) or ctx.output_used(2)

    # F.layer_norm needs weight and bias of exactly the normalised shape.
    if rank is not None and not wants_statistics:
        start = axis + rank if axis < 0 else axis
        normalized = rank - start
        if ctx.rank(1) == normalized and ctx.rank(2) in (None, normalized):
            shape = ctx.getitem(ctx.call(getattr, x, "shape"), slice(start, None))
            return [ctx.call(F.layer_norm, x, shape, scale, bias, epsilon)]

    output = ctx.call(runtime.layer_norm, x, scale, bias, axis, epsilon, stash_dtype)
    return [ctx.getitem(output, index) for index in range(3)]
