"""Element-wise ops: arithmetic, comparisons, logic and activations."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from akfc.lower import runtime
from akfc.lower.ops.common import dims_map
from akfc.lower.registry import register
from akfc.lower.values import Constant, Operand

if TYPE_CHECKING:
    from akfc.lower.codegen import NodeContext
    from akfc.lower.values import Value

__all__: list[str] = []

# Every version from the one current at opset 13 up to the newest in onnx 1.23.
# The later versions only add element types.
_UNARY: dict[str, tuple[Callable[..., Any], tuple[int, ...]]] = {
    "Abs": (torch.abs, (13,)),
    "Neg": (torch.neg, (13,)),
    "Exp": (torch.exp, (13,)),
    "Log": (torch.log, (13,)),
    "Sqrt": (torch.sqrt, (13,)),
    "Reciprocal": (torch.reciprocal, (13,)),
    "Relu": (torch.relu, (13, 14)),
    "Sigmoid": (torch.sigmoid, (13,)),
    "Tanh": (torch.tanh, (13,)),
    "Erf": (torch.erf, (13,)),
    "Not": (torch.logical_not, (1,)),
    "Ceil": (torch.ceil, (13,)),
    "Floor": (torch.floor, (13,)),
    "Round": (torch.round, (11, 22)),
    "Sign": (torch.sign, (13,)),
    "Sin": (torch.sin, (7, 22)),
    "Cos": (torch.cos, (7, 22)),
    "IsNaN": (torch.isnan, (13, 20)),
    "Softplus": (F.softplus, (1, 22)),
    "Softsign": (F.softsign, (1, 22)),
    "Mish": (F.mish, (18, 22)),
    "HardSwish": (F.hardswish, (14, 22)),
}


def _register_unary(op_type: str, function: Callable[..., Any], versions: tuple[int, ...]) -> None:
    def lower(ctx: NodeContext) -> list[Value]:
        return [ctx.call(function, ctx.tensor(0))]

    register(op_type, versions)(lower)


for _op_type, (_function, _versions) in _UNARY.items():
    _register_unary(_op_type, _function, _versions)


def _binary_operands(ctx: NodeContext) -> tuple[Operand | int | float | bool, Operand | int | float | bool]:
    """Return both inputs, a rank-0 constant second input beside a run-time tensor as a Python scalar.

    torch promotes a Python scalar exactly like a rank-0 tensor of the same
    kind, and the generated code reads `x + 2.0` instead of loading a buffer.
    Only the second input is inlined: torch functions take a number there but
    not as their first argument.
    """
    first, second = ctx.tensor(0), ctx.tensor(1)
    assert first is not None and second is not None
    if isinstance(first, torch.fx.Node) and _is_scalar_constant(ctx, 1):
        return first, second.item()  # type: ignore[union-attr]
    return first, second


def _is_scalar_constant(ctx: NodeContext, index: int) -> bool:
    value = ctx.value(index)
    if not isinstance(value, Constant) or value.tensor.dim() != 0:
        return False
    # A floating-point initializer is a weight: it stays a buffer or parameter.
    return value.initializer is None or not value.tensor.is_floating_point()


def _register_arithmetic(op_type: str, function: Callable[..., Any], item_function: Callable[..., Any]) -> None:
    def lower(ctx: NodeContext) -> list[Value | Any]:
        # Shape arithmetic (Shape -> Gather -> Mul -> Concat) stays on Python ints.
        dims = dims_map(ctx, item_function, (0, 1))
        if dims is not None:
            return [dims]
        first, second = _binary_operands(ctx)
        return [ctx.call(function, first, second)]

    register(op_type, (13, 14))(lower)


_register_arithmetic("Add", torch.add, operator.add)
_register_arithmetic("Sub", torch.sub, operator.sub)
_register_arithmetic("Mul", torch.mul, operator.mul)


@register("Div", (13, 14))
def _div(ctx: NodeContext) -> list[Value | Any]:
    dims = dims_map(ctx, runtime.int_div, (0, 1))
    if dims is not None:
        return [dims]
    first, second = _binary_operands(ctx)
    dtype = ctx.dtype(0)
    if dtype is None:
        ctx.fail("the element type of input 0 is unknown (shape inference could not infer it)")
    if dtype.is_floating_point or dtype.is_complex:
        return [ctx.call(torch.div, first, second)]
    # Integer division truncates toward zero in ONNX; Python and torch floor by default.
    return [ctx.call(torch.div, first, second, rounding_mode="trunc")]


@register("Pow", (13, 15))
def _pow(ctx: NodeContext) -> list[Value | Any]:
    base, exponent = _binary_operands(ctx)
    result = ctx.call(torch.pow, base, exponent)
    base_dtype, exponent_dtype = ctx.dtype(0), ctx.dtype(1)
    if base_dtype is None or exponent_dtype is None:
        # The output takes the base's type whatever the exponent's.
        return [ctx.method("type_as", result, ctx.tensor(0))]
    if base_dtype != exponent_dtype:
        result = ctx.method("to", result, base_dtype)
    return [result]


@register("Mod", (13, 28))
def _mod(ctx: NodeContext) -> list[Value | Any]:
    fmod = ctx.attr("fmod", 0)
    if fmod not in (0, 1):
        ctx.fail(f"attribute fmod={fmod} is invalid (0 or 1)")
    first, second = _binary_operands(ctx)
    # fmod=1 keeps the dividend's sign (C fmod); fmod=0 the divisor's (Python %).
    return [ctx.call(torch.fmod if fmod else torch.remainder, first, second)]


def _register_comparison(op_type: str, function: Callable[..., Any], versions: tuple[int, ...]) -> None:
    def lower(ctx: NodeContext) -> list[Value | Any]:
        first, second = _binary_operands(ctx)
        return [ctx.call(function, first, second)]

    register(op_type, versions)(lower)


_register_comparison("Equal", torch.eq, (13, 19))
_register_comparison("Less", torch.lt, (13,))
_register_comparison("Greater", torch.gt, (13,))
_register_comparison("LessOrEqual", torch.le, (12, 16))
_register_comparison("GreaterOrEqual", torch.ge, (12, 16))


def _register_logical(op_type: str, function: Callable[..., Any]) -> None:
    def lower(ctx: NodeContext) -> list[Value | Any]:
        return [ctx.call(function, ctx.tensor(0), ctx.tensor(1))]

    register(op_type, (7,))(lower)


_register_logical("And", torch.logical_and)
_register_logical("Or", torch.logical_or)
_register_logical("Xor", torch.logical_xor)


def _register_variadic(op_type: str, function: Callable[..., Any]) -> None:
    def lower(ctx: NodeContext) -> list[Value | Any]:
        if ctx.num_inputs == 1:
            return [ctx.value(0)]
        operands = ctx.tensors()
        if not operands:
            ctx.fail("at least one input is required")
        result = operands[0]
        for operand in operands[1:]:
            result = ctx.call(function, result, operand)
        if op_type == "Mean":
            result = ctx.call(torch.div, result, len(operands))
        return [result]

    register(op_type, (13,))(lower)


_register_variadic("Max", torch.maximum)
_register_variadic("Min", torch.minimum)
_register_variadic("Sum", torch.add)
_register_variadic("Mean", torch.add)


@register("Where", (9, 16))
def _where(ctx: NodeContext) -> list[Value | Any]:
    return [ctx.call(torch.where, ctx.tensor(0), ctx.tensor(1), ctx.tensor(2))]


@register("IsInf", (10, 20))
def _is_inf(ctx: NodeContext) -> list[Value | Any]:
    positive, negative = ctx.attr("detect_positive", 1), ctx.attr("detect_negative", 1)
    x = ctx.tensor(0)
    if positive and negative:
        return [ctx.call(torch.isinf, x)]
    if positive:
        return [ctx.call(torch.isposinf, x)]
    if negative:
        return [ctx.call(torch.isneginf, x)]
    return [ctx.call(torch.zeros_like, x, dtype=torch.bool)]


# -- activations with attributes --------------------------------------------------------------


@register("LeakyRelu", (6, 16))
def _leaky_relu(ctx: NodeContext) -> list[Value | Any]:
    return [ctx.call(F.leaky_relu, ctx.tensor(0), ctx.attr("alpha", 0.01))]


@register("PRelu", (9, 16))
def _prelu(ctx: NodeContext) -> list[Value | Any]:
    # ONNX broadcasts the slope against X (numpy style); F.prelu wants one slope per channel.
    x, slope = ctx.tensor(0), ctx.tensor(1)
    negative = ctx.call(torch.lt, x, 0)
    return [ctx.call(torch.where, negative, ctx.call(torch.mul, x, slope), x)]


@register("Elu", (6, 22))
def _elu(ctx: NodeContext) -> list[Value | Any]:
    return [ctx.call(F.elu, ctx.tensor(0), ctx.attr("alpha", 1.0))]


@register("Celu", (12, 28))
def _celu(ctx: NodeContext) -> list[Value | Any]:
    return [ctx.call(F.celu, ctx.tensor(0), ctx.attr("alpha", 1.0))]


@register("Selu", (6, 22))
def _selu(ctx: NodeContext) -> list[Value | Any]:
    # gamma * elu(x, alpha) takes the node's constants, which torch.selu fixes.
    alpha = ctx.attr("alpha", 1.67326319217681884765625)
    gamma = ctx.attr("gamma", 1.05070102214813232421875)
    return [ctx.call(torch.mul, ctx.call(F.elu, ctx.tensor(0), alpha), gamma)]


@register("ThresholdedRelu", (10, 22))
def _thresholded_relu(ctx: NodeContext) -> list[Value | Any]:
    return [ctx.call(F.threshold, ctx.tensor(0), ctx.attr("alpha", 1.0), 0.0)]


@register("HardSigmoid", (6, 22))
def _hard_sigmoid(ctx: NodeContext) -> list[Value | Any]:
    alpha, beta = ctx.attr("alpha", 0.2), ctx.attr("beta", 0.5)
    linear = ctx.call(torch.add, ctx.call(torch.mul, ctx.tensor(0), alpha), beta)
    return [ctx.call(torch.clamp, linear, 0.0, 1.0)]


@register("Gelu", (20,), limits="approximate must be 'none' or 'tanh'")
def _gelu(ctx: NodeContext) -> list[Value | Any]:
    approximate = ctx.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        ctx.fail(f"attribute approximate={approximate!r} is not supported ('none' or 'tanh')")
    return [ctx.call(F.gelu, ctx.tensor(0), approximate=approximate)]


@register("Clip", (13,))
def _clip(ctx: NodeContext) -> list[Value | Any]:
    x = ctx.tensor(0)
    low, high = ctx.scalar(1), ctx.scalar(2)
    if low is None and high is None:
        return [ctx.value(0)]
    if isinstance(low, torch.fx.Node) or isinstance(high, torch.fx.Node):
        # torch.clamp takes both bounds as numbers or both as tensors.
        low, high = ctx.tensor(1), ctx.tensor(2)
    return [ctx.call(torch.clamp, x, low, high)]
