"""Ops that move, select or re-arrange elements: Reshape, Slice, Gather, Concat and kin.

Where the exporters feed these ops shape vectors built from `Shape`, the
inputs arrive as `Dims` and the ops stay on Python ints (see values.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from akfc.lower import runtime
from akfc.lower.ops.common import normalize_axis, shape_items, static_ints
from akfc.lower.registry import register
from akfc.lower.values import Dims

if TYPE_CHECKING:
    from akfc.lower.codegen import NodeContext
    from akfc.lower.values import Item

__all__: list[str] = []

# The versions after 13 of these ops only add element types.
_LAYOUT_VERSIONS = (13, 21, 23, 24, 25)
# Slice bounds beyond this are clamped here: torch warns about (and truncates) larger ones.
_BOUND = 2**62


def _anchor(ctx: NodeContext, index: int) -> fx.Node | None:
    value = ctx.value(index)
    return value.anchor if isinstance(value, Dims) else None


@register("Reshape", (13, 14, 19, 21, 23, 24, 25))
def _reshape(ctx: NodeContext) -> list[Any]:
    allowzero = ctx.attr("allowzero", 0)
    shape = ctx.int_list(1)

    # A shape vector reshaped to a scalar or back to a vector (exporters do both).
    items = shape_items(ctx, 0)
    static_shape = static_ints(shape)
    if items is not None and isinstance(ctx.value(0), Dims) and static_shape is not None and len(static_shape) <= 1:
        return [ctx.dims(items[0], anchor=_anchor(ctx, 0), scalar=not static_shape, dtype=ctx.dtype(0))]

    x = ctx.tensor(0)
    if not isinstance(shape, list):
        return [ctx.call(runtime.reshape, x, shape, allowzero)]
    # NOTE: a 0 computed at run time (a zero-size dimension fed through Shape)
    # is taken literally, not as "copy the input's size".
    resolved: list[Item] = []
    for axis, size in enumerate(shape):
        if isinstance(size, int) and size == 0 and not allowzero:
            resolved.append(ctx.size(x, axis))
        else:
            resolved.append(size)
    ctx.note_rank(0, len(resolved))
    return [ctx.method("reshape", x, resolved)]


@register("Flatten", _LAYOUT_VERSIONS)
def _flatten(ctx: NodeContext) -> list[Any]:
    x, rank = ctx.tensor(0), ctx.rank(0)
    axis = ctx.attr("axis", 1)
    if rank is None or rank == 0:
        return [ctx.call(runtime.flatten_2d, x, axis)]
    if axis < 0:
        axis += rank
    if axis == 0:
        return [ctx.method("reshape", x, 1, -1)]
    if axis == rank:
        return [ctx.method("unsqueeze", ctx.call(torch.flatten, x), 1)]
    flat = ctx.call(torch.flatten, x, axis)
    if axis > 1:
        flat = ctx.call(torch.flatten, flat, 0, axis - 1)
    return [flat]


@register("Squeeze", _LAYOUT_VERSIONS)
def _squeeze(ctx: NodeContext) -> list[Any]:
    axes = ctx.int_list(1)
    items = shape_items(ctx, 0)
    if items is not None and isinstance(ctx.value(0), Dims) and len(items[0]) == 1:
        return [ctx.dims(items[0], anchor=_anchor(ctx, 0), scalar=True, dtype=ctx.dtype(0))]

    x, rank = ctx.tensor(0), ctx.rank(0)
    static_axes = static_ints(axes)
    if axes is None:
        return [ctx.call(torch.squeeze, x)]
    if static_axes is None or rank is None:
        return [ctx.call(runtime.squeeze, x, axes)]
    dims = tuple(sorted(normalize_axis(ctx, axis, rank) for axis in static_axes))
    return [ctx.call(torch.squeeze, x, dims)]


@register("Unsqueeze", _LAYOUT_VERSIONS)
def _unsqueeze(ctx: NodeContext) -> list[Any]:
    axes = ctx.int_list(1)
    items = shape_items(ctx, 0)
    static_axes = static_ints(axes)
    if items is not None and isinstance(ctx.value(0), Dims) and items[1] and static_axes in ([0], [-1]):
        return [ctx.dims(items[0], anchor=_anchor(ctx, 0), scalar=False, dtype=ctx.dtype(0))]

    x, rank = ctx.tensor(0), ctx.rank(0)
    if static_axes is None or rank is None:
        return [ctx.call(runtime.unsqueeze, x, axes)]
    output_rank = rank + len(static_axes)
    for axis in sorted(normalize_axis(ctx, axis, output_rank) for axis in static_axes):
        x = ctx.call(torch.unsqueeze, x, axis)
    return [x]


@register("Transpose", _LAYOUT_VERSIONS)
def _transpose(ctx: NodeContext) -> list[Any]:
    x, rank = ctx.tensor(0), ctx.rank(0)
    perm = ctx.attr("perm")
    if perm is None:
        if rank is None:
            return [ctx.call(runtime.reverse_axes, x)]
        perm = list(reversed(range(rank)))
    return [ctx.method("permute", x, *perm)]


@register("Expand", (13,))
def _expand(ctx: NodeContext) -> list[Any]:
    return [ctx.call(runtime.expand, ctx.tensor(0), ctx.int_list(1))]


@register("Tile", (13,))
def _tile(ctx: NodeContext) -> list[Any]:
    return [ctx.method("repeat", ctx.tensor(0), ctx.int_list(1))]


@register("Concat", (13,))
def _concat(ctx: NodeContext) -> list[Any]:
    axis = ctx.attr("axis")
    indices = [index for index in range(ctx.num_inputs) if ctx.has_input(index)]

    # Concatenated shape vectors stay a shape vector.
    anchors = [_anchor(ctx, index) for index in indices]
    if any(anchor is not None for anchor in anchors):
        parts = [shape_items(ctx, index) for index in indices]
        if all(part is not None and not part[1] for part in parts):
            items = [item for part in parts for item in part[0]]  # type: ignore[index]
            anchor = next(anchor for anchor in anchors if anchor is not None)
            dtype = next(ctx.dtype(index) for index in indices if ctx.dtype(index) is not None)
            return [ctx.dims(items, anchor=anchor, dtype=dtype)]

    return [ctx.call(torch.cat, ctx.tensors(), axis)]


@register("Split", (13, 18))
def _split(ctx: NodeContext) -> list[Any]:
    axis, count = ctx.attr("axis", 0), ctx.num_outputs
    x = ctx.tensor(0)
    sizes = ctx.int_list(1)
    if sizes is not None:
        parts = ctx.call(torch.split, x, sizes, axis)
    else:
        # Equal parts; with num_outputs (Split-18) the last part may be smaller,
        # exactly how torch.chunk sizes its chunks.
        parts = ctx.call(torch.chunk, x, ctx.attr("num_outputs", count), axis)
    return [ctx.getitem(parts, index) for index in range(count)]


@register("Slice", (13,))
def _slice(ctx: NodeContext) -> list[Any]:
    starts, ends = ctx.int_list(1), ctx.int_list(2)
    axes, steps = ctx.int_list(3), ctx.int_list(4)
    static_axes, static_steps = static_ints(axes), static_ints(steps)

    # Slicing a shape vector.
    items = shape_items(ctx, 0)
    if (
        items is not None
        and isinstance(ctx.value(0), Dims)
        and static_ints(starts) is not None
        and static_ints(ends) is not None
        and (static_steps is not None or steps is None)
    ):
        start, end = static_ints(starts)[0], static_ints(ends)[0]  # type: ignore[index]
        step = static_steps[0] if static_steps else 1
        return [ctx.dims(items[0][slice(start, end, step)], anchor=_anchor(ctx, 0), dtype=ctx.dtype(0))]

    x, rank = ctx.tensor(0), ctx.rank(0)
    simple = (
        rank is not None
        and isinstance(starts, list)
        and isinstance(ends, list)
        and (axes is None or static_axes is not None)
        and (steps is None or (static_steps is not None and all(step > 0 for step in static_steps)))
    )
    if not simple:
        return [ctx.call(runtime.slice_axes, x, starts, ends, axes, steps)]
    assert isinstance(starts, list)
    assert isinstance(ends, list)
    assert rank is not None
    axes_list = static_axes if static_axes is not None else list(range(len(starts)))
    steps_list = static_steps if static_steps is not None else [1] * len(starts)
    index: list[slice] = [slice(None)] * rank
    for start, end, axis, step in zip(starts, ends, axes_list, steps_list, strict=True):
        index[normalize_axis(ctx, axis, rank)] = slice(_clamp(start), _clamp(end), None if step == 1 else step)
    while index and index[-1] == slice(None):
        index.pop()
    return [ctx.getitem(x, tuple(index))]


def _clamp(bound: Item) -> Item:
    if isinstance(bound, int):
        return max(-_BOUND, min(bound, _BOUND))
    return bound


@register("Gather", (13,))
def _gather(ctx: NodeContext) -> list[Any]:
    axis = ctx.attr("axis", 0)

    # Picking sizes out of a shape vector.
    items = shape_items(ctx, 0)
    indices = shape_items(ctx, 1)
    if items is not None and indices is not None and isinstance(ctx.value(0), Dims):
        picked = [items[0][index] for index in indices[0]]  # type: ignore[index]
        return [ctx.dims(picked, anchor=_anchor(ctx, 0), scalar=indices[1], dtype=ctx.dtype(0))]

    x, rank = ctx.tensor(0), ctx.rank(0)
    index_constant = ctx.constant(1)
    if rank is None:
        return [ctx.call(runtime.gather, x, ctx.tensor(1), axis)]
    axis = normalize_axis(ctx, axis, rank)
    if index_constant is not None and index_constant.dim() == 0:
        index: Any = int(index_constant.item())
    else:
        index = ctx.tensor(1)
        if ctx.dtype(1) not in (torch.int64, None):
            index = ctx.method("long", index)
    return [ctx.getitem(x, (slice(None),) * axis + (index,))]


@register("GatherElements", (13,))
def _gather_elements(ctx: NodeContext) -> list[Any]:
    axis = ctx.attr("axis", 0)
    rank = ctx.rank(0)
    if rank is not None:
        axis = normalize_axis(ctx, axis, rank)
    return [ctx.call(runtime.gather_elements, ctx.tensor(0), ctx.tensor(1), axis)]


@register("Pad", (13, 18, 19, 21, 23, 24, 25))
def _pad(ctx: NodeContext) -> list[Any]:
    mode = ctx.attr("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        ctx.fail(f"attribute mode={mode!r} is not supported")
    value = ctx.scalar(2)
    if value is None:
        value = 0
    axes = ctx.int_list(3) if ctx.version >= 18 else None
    return [ctx.call(runtime.pad, ctx.tensor(0), ctx.int_list(1), mode, value, axes)]
