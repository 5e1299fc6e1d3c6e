"""Reductions and ops that rank or accumulate along an axis: Reduce*, ArgMax, CumSum, TopK."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from akfc.lower import runtime
from akfc.lower.ops.common import normalize_axis, static_ints
from akfc.lower.registry import register

if TYPE_CHECKING:
    from akfc.lower.codegen import NodeContext

__all__: list[str] = []

# op type -> (runtime reduction name, schema versions, first version taking axes as an input)
_REDUCTIONS: dict[str, tuple[str, tuple[int, ...], int]] = {
    "ReduceSum": ("sum", (13,), 13),
    "ReduceMean": ("mean", (13, 18), 18),
    "ReduceMax": ("max", (13, 18, 20), 18),
    "ReduceMin": ("min", (13, 18, 20), 18),
    "ReduceProd": ("prod", (13, 18), 18),
    "ReduceSumSquare": ("sum_square", (13, 18), 18),
    "ReduceL1": ("l1", (13, 18), 18),
    "ReduceL2": ("l2", (13, 18), 18),
    "ReduceLogSum": ("log_sum", (13, 18, 28), 18),
    "ReduceLogSumExp": ("log_sum_exp", (13, 18, 28), 18),
}


def _register_reduction(op_type: str, name: str, versions: tuple[int, ...], axes_input_since: int) -> None:
    def lower(ctx: NodeContext) -> list[Any]:
        keepdims = ctx.attr("keepdims", 1)
        noop_with_empty_axes = ctx.attr("noop_with_empty_axes", 0)
        axes = ctx.int_list(1) if ctx.version >= axes_input_since else ctx.attr("axes")
        x, rank = ctx.tensor(0), ctx.rank(0)
        static_axes = static_ints(axes)
        if (axes is not None and static_axes is None) or rank is None:
            return [ctx.call(runtime.reduce, name, x, axes, keepdims, noop_with_empty_axes)]

        if not static_axes:
            if noop_with_empty_axes:
                return [ctx.value(0)]
            static_axes = list(range(rank))
        dims = tuple(sorted({normalize_axis(ctx, axis, rank) for axis in static_axes}))
        keepdim = bool(keepdims)
        dtype = ctx.dtype(0)
        floating = dtype is not None and dtype.is_floating_point
        # The common float cases call torch directly; the rest go through the
        # runtime versions, which keep integer types and handle empty inputs.
        if name == "sum" and floating and dims:
            return [ctx.call(torch.sum, x, dims, keepdim)]
        if name == "mean" and floating and dims:
            return [ctx.call(torch.mean, x, dims, keepdim)]
        function = getattr(runtime, f"reduce_{name}")
        return [ctx.call(function, x, dims, keepdim)]

    register(op_type, versions)(lower)


for _op_type, (_name, _versions, _since) in _REDUCTIONS.items():
    _register_reduction(_op_type, _name, _versions, _since)


def _register_arg(op_type: str, function: Any, last_function: Any) -> None:
    def lower(ctx: NodeContext) -> list[Any]:
        x, rank = ctx.tensor(0), ctx.rank(0)
        axis, keepdim = ctx.attr("axis", 0), bool(ctx.attr("keepdims", 1))
        if rank is not None:
            axis = normalize_axis(ctx, axis, rank)
        if ctx.attr("select_last_index", 0):
            return [ctx.call(last_function, x, axis, keepdim)]
        # torch returns the first index among equal values, as select_last_index=0 requires.
        return [ctx.call(function, x, axis, keepdim)]

    register(op_type, (13,))(lower)


_register_arg("ArgMax", torch.argmax, runtime.argmax_last)
_register_arg("ArgMin", torch.argmin, runtime.argmin_last)


@register("CumSum", (11, 14))
def _cumsum(ctx: NodeContext) -> list[Any]:
    axis = ctx.int_scalar(1)
    exclusive, reverse = ctx.attr("exclusive", 0), ctx.attr("reverse", 0)
    x, dtype = ctx.tensor(0), ctx.dtype(0)
    if not exclusive and not reverse and dtype is not None:
        # dtype= keeps int32 sums in int32 (torch would widen them to int64).
        return [ctx.call(torch.cumsum, x, axis, dtype=dtype)]
    return [ctx.call(runtime.cumsum, x, axis, exclusive, reverse)]


@register("TopK", (11, 24))
def _top_k(ctx: NodeContext) -> list[Any]:
    k = ctx.int_scalar(1)
    axis, largest = ctx.attr("axis", -1), ctx.attr("largest", 1)
    rank = ctx.rank(0)
    if rank is not None:
        axis = normalize_axis(ctx, axis, rank)
    # sorted=0 leaves the order free, so the sorted result serves both.
    output = ctx.call(runtime.top_k, ctx.tensor(0), k, axis, largest)
    return [ctx.getitem(output, 0), ctx.getitem(output, 1)]
