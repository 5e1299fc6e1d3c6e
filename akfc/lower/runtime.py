"""Functions that generated code calls where no single torch op has the ONNX semantics.

Each one is plain torch code over its arguments, so torch.compile traces
through it. The op lowerings call these only when an argument (a shape, the
axes, the slice bounds) is computed at run time, or when an ONNX edge case
needs Python logic. For values known while generating code they emit torch
ops directly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.fx

_Function = TypeVar("_Function", bound=Callable[..., Any])


def _leaf(function: _Function) -> _Function:
    """Keep `function` one call in FX graphs that symbolic tracing rebuilds.

    Unpickling a GraphModule traces its generated code again; these helpers
    branch on values, so the tracer must record them as calls, not enter them.
    """

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        proxy = next((value for value in _flatten((args, kwargs)) if isinstance(value, torch.fx.Proxy)), None)
        if proxy is not None:
            return proxy.tracer.create_proxy("call_function", call, args, kwargs)
        return function(*args, **kwargs)

    return call  # type: ignore[return-value]


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in _flatten(item)]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _flatten(item)]
    return [value]

__all__ = [
    "argmax_last",
    "argmin_last",
    "arange",
    "batch_norm",
    "cumsum",
    "dims_tensor",
    "dropout",
    "expand",
    "flatten_2d",
    "gather",
    "gather_elements",
    "int_div",
    "layer_norm",
    "pad",
    "reduce",
    "reduce_l1",
    "reduce_l2",
    "reduce_log_sum",
    "reduce_log_sum_exp",
    "reduce_max",
    "reduce_mean",
    "reduce_min",
    "reduce_prod",
    "reduce_sum",
    "reduce_sum_square",
    "reshape",
    "reverse_axes",
    "shape_tensor",
    "slice_axes",
    "squeeze",
    "top_k",
    "unsqueeze",
]


@_leaf
def dims_tensor(items: list[int], like: torch.Tensor, dtype: torch.dtype, scalar: bool) -> torch.Tensor:
    """Make a shape vector (or scalar) from sizes, on the device of `like`."""
    tensor = torch.tensor(items, dtype=dtype, device=like.device)
    return tensor.reshape(()) if scalar else tensor


@_leaf
def shape_tensor(x: torch.Tensor, start: int, end: int | None) -> torch.Tensor:
    """ONNX Shape of a tensor whose rank was unknown while generating code."""
    return torch.tensor(x.shape[start:end], dtype=torch.int64, device=x.device)


@_leaf
def dropout(x: torch.Tensor, ratio: float | torch.Tensor, training: bool | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dropout with its mask; training mode scales the kept values by 1 / (1 - ratio)."""
    ratio = float(ratio)
    if not bool(training) or ratio == 0.0:
        return x, torch.ones_like(x, dtype=torch.bool)
    mask = torch.rand(x.shape, device=x.device) >= ratio
    return x * mask / (1.0 - ratio), mask


@_leaf
def int_div(dividend: int, divisor: int) -> int:
    """Divide Python ints rounding toward zero, as ONNX Div does on integers."""
    quotient = abs(dividend) // abs(divisor)
    return quotient if (dividend < 0) == (divisor < 0) else -quotient


@_leaf
def reshape(x: torch.Tensor, shape: list[int], allowzero: int) -> torch.Tensor:
    """Reshape with ONNX rules: 0 copies the input's size there (unless allowzero), -1 is inferred."""
    if not allowzero:
        shape = [x.size(axis) if size == 0 else size for axis, size in enumerate(shape)]
    return x.reshape(shape)


@_leaf
def flatten_2d(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Flatten to 2-D: the dimensions before `axis` form the rows, the rest the columns."""
    if axis < 0:
        axis += x.dim()
    rows = 1
    for size in x.shape[:axis]:
        rows = rows * size
    columns = 1
    for size in x.shape[axis:]:
        columns = columns * size
    return x.reshape(rows, columns)


@_leaf
def squeeze(x: torch.Tensor, axes: list[int] | None) -> torch.Tensor:
    """Squeeze the given axes (negative ones count from the end), or every size-1 axis."""
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(axis + x.dim() if axis < 0 else axis for axis in axes))


@_leaf
def unsqueeze(x: torch.Tensor, axes: list[int]) -> torch.Tensor:
    """Insert size-1 axes at positions of the output (negative ones count from its end)."""
    rank = x.dim() + len(axes)
    for axis in sorted(axis + rank if axis < 0 else axis for axis in axes):
        x = x.unsqueeze(axis)
    return x


@_leaf
def reverse_axes(x: torch.Tensor) -> torch.Tensor:
    """Transpose with the default permutation: all axes reversed."""
    return x.permute(tuple(range(x.dim() - 1, -1, -1)))


@_leaf
def expand(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """Broadcast `x` against `shape` in both directions, as ONNX Expand does."""
    return x.expand(torch.broadcast_shapes(x.shape, tuple(shape)))


@_leaf
def slice_axes(
    x: torch.Tensor,
    starts: list[int],
    ends: list[int],
    axes: list[int] | None,
    steps: list[int] | None,
) -> torch.Tensor:
    """Slice with ONNX rules, negative steps included (torch indexing rejects those)."""
    if axes is None:
        axes = list(range(len(starts)))
    if steps is None:
        steps = [1] * len(starts)
    index: list[slice] = [slice(None)] * x.dim()
    flips: list[int] = []
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if axis < 0:
            axis += x.dim()
        size = x.size(axis)
        if step > 0:
            index[axis] = slice(start, end, step)
            continue
        # Negative step: clamp as ONNX does, then slice the flipped axis forward.
        start = start + size if start < 0 else start
        end = end + size if end < 0 else end
        start = max(-1, min(start, size - 1))
        end = max(-1, min(end, size - 1))
        flips.append(axis)
        index[axis] = slice(size - 1 - start, size - 1 - end, -step)
    if flips:
        x = x.flip(flips)
    return x[tuple(index)]


@_leaf
def arange(start: torch.Tensor, limit: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """ONNX Range over scalar tensors: start + i * delta for i < ceil((limit - start) / delta).

    The values are computed in float64 (int64 for integers) and then rounded
    to the output type once, so float16 ranges do not accumulate rounding.
    """
    dtype = start.dtype
    wide = torch.float64 if dtype.is_floating_point else torch.int64
    first, last, step = (value.to(wide).item() for value in (start, limit, delta))
    count = max(math.ceil((last - first) / step), 0)
    steps = torch.arange(count, dtype=wide, device=start.device)
    return (first + steps * step).to(dtype)


@_leaf
def reduce(
    function: str,
    x: torch.Tensor,
    axes: list[int] | None,
    keepdims: int,
    noop_with_empty_axes: int,
) -> torch.Tensor:
    """Reduce over axes given at run time: `function` is a reduction name, see `_REDUCTIONS`."""
    if not axes:
        if noop_with_empty_axes:
            return x
        axes = list(range(x.dim()))
    dims = tuple(sorted(axis + x.dim() if axis < 0 else axis for axis in axes))
    return _REDUCTIONS[function](x, dims, bool(keepdims))


def _reduce_extreme(x: torch.Tensor, dims: tuple[int, ...], keepdim: bool, largest: bool) -> torch.Tensor:
    if x.numel() == 0 or not dims:
        if not dims:
            return x
        # ONNX: the max of nothing is the lowest value of the type (the min of nothing the highest).
        shape = [1 if axis in dims else size for axis, size in enumerate(x.shape)]
        if not keepdim:
            shape = [size for axis, size in enumerate(shape) if axis not in dims]
        if x.dtype == torch.bool:
            fill: float | int | bool = not largest
        elif x.dtype.is_floating_point:
            fill = -torch.inf if largest else torch.inf
        else:
            info = torch.iinfo(x.dtype)
            fill = info.min if largest else info.max
        return torch.full(shape, fill, dtype=x.dtype, device=x.device)
    return torch.amax(x, dims, keepdim) if largest else torch.amin(x, dims, keepdim)


@_leaf
def reduce_max(x: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    return _reduce_extreme(x, dims, keepdim, largest=True)


@_leaf
def reduce_min(x: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    return _reduce_extreme(x, dims, keepdim, largest=False)


@_leaf
def reduce_sum(x: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    return torch.sum(x, dims, keepdim, dtype=x.dtype) if dims else x


@_leaf
def reduce_mean(x: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    if not dims:
        return x
    if x.dtype.is_floating_point:
        return torch.mean(x, dims, keepdim)
    return torch.mean(x.double(), dims, keepdim).to(x.dtype)


@_leaf
def reduce_prod(x: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    for axis in sorted(dims, reverse=True):
        x = torch.prod(x, axis, keepdim, dtype=x.dtype)
    return x


@_leaf
def reduce_sum_square(x: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    return reduce_sum(x * x, dims, keepdim)


@_leaf
def reduce_l1(x: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    return reduce_sum(x.abs(), dims, keepdim)


@_leaf
def reduce_l2(x: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    return torch.sqrt(reduce_sum(x * x, dims, keepdim))


@_leaf
def reduce_log_sum(x: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    return torch.log(reduce_sum(x, dims, keepdim))


@_leaf
def reduce_log_sum_exp(x: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    if not dims:
        return x
    return torch.logsumexp(x, dims, keepdim)


_REDUCTIONS = {
    "max": reduce_max,
    "min": reduce_min,
    "sum": reduce_sum,
    "mean": reduce_mean,
    "prod": reduce_prod,
    "sum_square": reduce_sum_square,
    "l1": reduce_l1,
    "l2": reduce_l2,
    "log_sum": reduce_log_sum,
    "log_sum_exp": reduce_log_sum_exp,
}


@_leaf
def argmax_last(x: torch.Tensor, axis: int, keepdim: bool) -> torch.Tensor:
    """ArgMax returning the last index among equal maxima (select_last_index=1)."""
    flipped = torch.argmax(x.flip(axis), axis, keepdim)
    return x.size(axis) - 1 - flipped


@_leaf
def argmin_last(x: torch.Tensor, axis: int, keepdim: bool) -> torch.Tensor:
    """ArgMin returning the last index among equal minima (select_last_index=1)."""
    flipped = torch.argmin(x.flip(axis), axis, keepdim)
    return x.size(axis) - 1 - flipped


@_leaf
def cumsum(x: torch.Tensor, axis: int, exclusive: int, reverse: int) -> torch.Tensor:
    """ONNX CumSum: optionally exclusive (each sum leaves out its own element) and reversed."""
    if reverse:
        x = x.flip(axis)
    total = torch.cumsum(x, axis, dtype=x.dtype)
    if exclusive:
        # Shift by one along the axis, leading with zeros.
        total = torch.cat([torch.zeros_like(total.narrow(axis, 0, 1)), total.narrow(axis, 0, x.size(axis) - 1)], axis)
    if reverse:
        total = total.flip(axis)
    return total


@_leaf
def top_k(x: torch.Tensor, k: int, axis: int, largest: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the k largest (or smallest) values and their indices, the lower index first among ties.

    A stable sort gives the tie order ONNX requires, which torch.topk does not promise.
    """
    values, indices = torch.sort(x, dim=axis, descending=bool(largest), stable=True)
    return values.narrow(axis, 0, k), indices.narrow(axis, 0, k)


@_leaf
def gather(x: torch.Tensor, indices: torch.Tensor, axis: int) -> torch.Tensor:
    """ONNX Gather: index one axis with a tensor of any rank; negative indices count from the end."""
    if axis < 0:
        axis += x.dim()
    if indices.dtype != torch.int64:
        indices = indices.long()
    return x[(slice(None),) * axis + (indices,)]


@_leaf
def gather_elements(x: torch.Tensor, indices: torch.Tensor, axis: int) -> torch.Tensor:
    """ONNX GatherElements: torch.gather with negative indices counting from the end."""
    indices = indices.long()
    indices = torch.where(indices < 0, indices + x.size(axis), indices)
    return torch.gather(x, axis, indices)


@_leaf
def layer_norm(
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    axis: int,
    epsilon: float,
    stash_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNormalization that also returns the mean and inverse standard deviation.

    The statistics are returned as `stash_dtype` (ONNX's stash_type) and
    computed in it, or in the input's type where that is wider (float64).
    """
    if axis < 0:
        axis += x.dim()
    dims = tuple(range(axis, x.dim()))
    compute = x.to(torch.promote_types(x.dtype, stash_dtype))
    mean = compute.mean(dims, keepdim=True)
    centered = compute - mean
    inv_std_dev = torch.rsqrt((centered * centered).mean(dims, keepdim=True) + epsilon)
    y = (centered * inv_std_dev).to(x.dtype) * scale
    if bias is not None:
        y = y + bias
    return y, mean.to(stash_dtype), inv_std_dev.to(stash_dtype)


@_leaf
def batch_norm(
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    epsilon: float,
) -> torch.Tensor:
    """Inference BatchNormalization written out, so that gradients reach mean and var too."""
    shape = (-1,) + (1,) * (x.dim() - 2)
    inv_std_dev = torch.rsqrt(var.reshape(shape) + epsilon)
    return (x - mean.reshape(shape)) * inv_std_dev * scale.reshape(shape) + bias.reshape(shape)


@_leaf
def pad(
    x: torch.Tensor, pads: list[int], mode: str, value: float | torch.Tensor, axes: list[int] | None
) -> torch.Tensor:
    """ONNX Pad: `pads` lists all begins then all ends (per axis of `axes`); negative pads crop."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    rank = x.dim()
    if axes is None:
        axes = list(range(rank))
    axes = [axis + rank if axis < 0 else axis for axis in axes]
    begins = [0] * rank
    ends = [0] * rank
    for position, axis in enumerate(axes):
        begins[axis] = pads[position]
        ends[axis] = pads[position + len(axes)]
    # torch.nn.functional.pad takes (begin, end) pairs from the last axis backwards.
    torch_pads: list[int] = []
    for axis in reversed(range(rank)):
        torch_pads += [begins[axis], ends[axis]]
    if mode == "constant":
        return torch.nn.functional.pad(x, torch_pads, mode="constant", value=value)
    # The other modes pad only positive amounts here; crops are applied after.
    positive = [max(amount, 0) for amount in torch_pads]
    padded = _pad_non_constant(x, positive, mode)
    index = []
    for axis in range(rank):
        begin = -min(begins[axis], 0)
        end = padded.size(axis) + min(ends[axis], 0)
        index.append(slice(begin, end))
    return padded[tuple(index)]


def _pad_non_constant(x: torch.Tensor, torch_pads: list[int], mode: str) -> torch.Tensor:
    # Build the padded tensor one axis at a time with index arithmetic, which works
    # for any rank and dtype (torch's reflect/replicate kernels cover few of either).
    rank = x.dim()
    for axis in range(rank):
        begin, end = torch_pads[2 * (rank - 1 - axis)], torch_pads[2 * (rank - 1 - axis) + 1]
        if begin == 0 and end == 0:
            continue
        size = x.size(axis)
        positions = torch.arange(-begin, size + end, device=x.device)
        if mode == "edge":
            positions = positions.clamp(0, size - 1)
        elif mode == "reflect":
            period = 2 * (size - 1) if size > 1 else 1
            positions = positions.remainder(period)
            positions = torch.where(positions >= size, period - positions, positions)
        else:  # wrap
            positions = positions.remainder(size)
        x = x.index_select(axis, positions)
    return x
