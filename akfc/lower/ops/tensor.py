"""Ops that create, copy or convert tensors: Constant, Cast, Shape, Range, Dropout and kin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import onnx
import torch
from onnx import numpy_helper

from akfc.lower import runtime
from akfc.lower.dtypes import onnx_type_name, tensor_from_numpy, to_torch_dtype
from akfc.lower.registry import register
from akfc.lower.values import Dims

if TYPE_CHECKING:
    from akfc.lower.codegen import NodeContext
    from akfc.lower.values import Value

__all__: list[str] = []

_FLOAT8_TYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2, torch.float8_e5m2fnuz)


@register("Identity", (13, 14, 16, 19, 21, 23, 24, 25), limits="tensors only (no sequence or optional values)")
def _identity(ctx: NodeContext) -> list[Value | None]:
    return [ctx.value(0)]


@register("Constant", (13, 19, 21, 23, 24, 25), limits="no string or sparse values")
def _constant(ctx: NodeContext) -> list[Any]:
    if ctx.has_attr("value"):
        proto = _attribute_tensor(ctx, "value")
        if proto.data_type == onnx.TensorProto.STRING:
            ctx.fail("string constants cannot be lowered to torch")
        try:
            return [tensor_from_numpy(numpy_helper.to_array(proto))]
        except TypeError as error:
            ctx.fail(str(error))
    if ctx.has_attr("value_float"):
        return [torch.tensor(ctx.attr("value_float"), dtype=torch.float32)]
    if ctx.has_attr("value_floats"):
        return [torch.tensor(ctx.attr("value_floats"), dtype=torch.float32)]
    if ctx.has_attr("value_int"):
        return [torch.tensor(ctx.attr("value_int"), dtype=torch.int64)]
    if ctx.has_attr("value_ints"):
        return [torch.tensor(ctx.attr("value_ints"), dtype=torch.int64)]
    ctx.fail("only tensor, float and int values are supported (not strings or sparse tensors)")


@register("ConstantOfShape", (9, 20, 21, 23, 24, 25))
def _constant_of_shape(ctx: NodeContext) -> list[Any]:
    fill = torch.zeros((), dtype=torch.float32)
    if ctx.has_attr("value"):
        fill = tensor_from_numpy(numpy_helper.to_array(_attribute_tensor(ctx, "value")))
    fill_value = fill.reshape(-1)[0].item()
    shape = ctx.int_list(0)
    value = ctx.value(0)
    if isinstance(value, Dims):
        device = ctx.call(getattr, value.anchor, "device")
    elif isinstance(value, torch.fx.Node):
        device = ctx.call(getattr, value, "device")
    else:
        device = None
    return [ctx.call(torch.full, shape, fill_value, dtype=fill.dtype, device=device)]


def _attribute_tensor(ctx: NodeContext, name: str) -> onnx.TensorProto:
    for attribute in ctx.node.attribute:
        if attribute.name == name:
            return attribute.t
    raise KeyError(name)


@register(
    "Cast",
    (13, 19, 21, 23, 24, 25, 28),
    limits="no string, 2-, 4- or 6-bit types; no cast to FLOAT8E8M0",
)
def _cast(ctx: NodeContext) -> list[Any]:
    target = ctx.attr("to")
    dtype = to_torch_dtype(target)
    if dtype is None:
        ctx.fail(f"casting to {onnx_type_name(target)} is not supported: torch has no such type")
    if dtype == torch.float8_e8m0fnu:
        ctx.fail("casting to FLOAT8E8M0 is not supported: torch's conversion does not implement round_mode")
    return [_cast_to(ctx, dtype, saturate=ctx.attr("saturate", 1))]


@register("CastLike", (15, 19, 21, 23, 24, 25), limits="no cast to FLOAT8E8M0")
def _cast_like(ctx: NodeContext) -> list[Any]:
    dtype = ctx.dtype(1)
    if dtype == torch.float8_e8m0fnu:
        ctx.fail("casting to FLOAT8E8M0 is not supported: torch's conversion does not implement round_mode")
    if dtype is None:
        return [ctx.method("type_as", ctx.tensor(0), ctx.tensor(1))]
    return [_cast_to(ctx, dtype, saturate=ctx.attr("saturate", 1))]


def _cast_to(ctx: NodeContext, dtype: torch.dtype, saturate: int) -> Any:
    value = ctx.value(0)
    if isinstance(value, Dims) and dtype in (torch.int64, torch.int32):
        return Dims(value.items, value.scalar, dtype, value.anchor)
    x = ctx.tensor(0)
    source = ctx.dtype(0)
    if dtype in _FLOAT8_TYPES and (source is None or source.is_floating_point):
        if saturate:
            # Out-of-range values (infinities included) become the largest finite value.
            largest = torch.finfo(dtype).max
            x = ctx.call(torch.clamp, x, -largest, largest)
        elif dtype == torch.float8_e4m3fn:
            # torch saturates this type even so; ONNX wants NaN for whatever rounds
            # past 448, i.e. beyond the midpoint 464 to the next (missing) step 480.
            x = ctx.call(torch.where, ctx.call(torch.gt, ctx.call(torch.abs, x), 464.0), torch.nan, x)
    return ctx.method("to", x, dtype)


@register("Shape", (13, 15, 19, 21, 23, 24, 25))
def _shape(ctx: NodeContext) -> list[Any]:
    start, end = ctx.attr("start", 0), ctx.attr("end", None)
    constant = ctx.constant(0)
    if constant is not None:
        # Python slicing clamps start and end exactly as Shape-15 specifies.
        return [torch.tensor(constant.shape[start:end], dtype=torch.int64)]
    x = ctx.tensor(0)
    rank = ctx.rank(0)
    if rank is None:
        return [ctx.call(runtime.shape_tensor, x, start, end)]
    axes = list(range(rank))[slice(start, end)]
    anchor = x if isinstance(x, torch.fx.Node) else None
    return [ctx.dims([ctx.size(x, axis) for axis in axes], anchor=anchor)]


@register("Size", (13, 19, 21, 23, 24, 25))
def _size(ctx: NodeContext) -> list[Any]:
    constant = ctx.constant(0)
    if constant is not None:
        return [torch.tensor(constant.numel(), dtype=torch.int64)]
    x = ctx.tensor(0)
    anchor = x if isinstance(x, torch.fx.Node) else None
    return [ctx.dims([ctx.method("numel", x)], anchor=anchor, scalar=True)]


@register("Range", (11, 27))
def _range(ctx: NodeContext) -> list[Any]:
    start, limit, delta = ctx.tensor(0), ctx.tensor(1), ctx.tensor(2)
    return [ctx.call(runtime.arange, start, limit, delta)]


@register("Dropout", (13, 22), limits="training_mode=1 draws torch's random mask (the seed attribute is ignored)")
def _dropout(ctx: NodeContext) -> list[Any]:
    training = ctx.scalar(2)
    if training is None or training is False or training == 0:
        # Inference: the identity, and a mask that keeps everything.
        mask = ctx.call(torch.ones_like, ctx.tensor(0), dtype=torch.bool) if ctx.output_used(1) else None
        return [ctx.value(0), mask]
    ratio = ctx.scalar(1)
    if ratio is None:
        ratio = 0.5
    output = ctx.call(runtime.dropout, ctx.tensor(0), ratio, training)
    return [ctx.getitem(output, 0), ctx.getitem(output, 1)]


@register("Trilu", (14,))
def _trilu(ctx: NodeContext) -> list[Any]:
    k = ctx.int_scalar(1)
    function = torch.triu if ctx.attr("upper", 1) else torch.tril
    return [ctx.call(function, ctx.tensor(0), 0 if k is None else k)]
