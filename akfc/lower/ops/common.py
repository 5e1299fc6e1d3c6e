"""Helpers shared by the op lowerings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from akfc.lower.values import Constant, Dims, Item

if TYPE_CHECKING:
    from akfc.lower.codegen import NodeContext

__all__ = ["normalize_axis", "shape_items", "dims_map", "static_ints"]


def normalize_axis(ctx: NodeContext, axis: int, rank: int) -> int:
    """Return `axis` counted from the front, or fail when it is outside [-rank, rank)."""
    if not -rank <= axis < rank:
        ctx.fail(f"axis {axis} is outside the input's rank {rank}")
    return axis + rank if axis < 0 else axis


def static_ints(values: Sequence[Item] | Any) -> list[int] | None:
    """Return the list when every item is a Python int known now, else None."""
    if isinstance(values, (list, tuple)) and all(isinstance(value, int) for value in values):
        return [int(value) for value in values]
    return None


def shape_items(ctx: NodeContext, index: int) -> tuple[list[Item], bool] | None:
    """Return input `index` as shape items and whether it is a scalar, if it is a small int vector.

    Dims values and int Constants of rank 0 or 1 qualify; anything else
    (float data, run-time tensors) gives None.
    """
    value = ctx.value(index)
    if isinstance(value, Dims):
        return list(value.items), value.scalar
    if isinstance(value, Constant):
        tensor = value.tensor
        if tensor.dim() <= 1 and tensor.dtype in (torch.int64, torch.int32) and tensor.numel() <= 64:
            return [int(item) for item in tensor.reshape(-1).tolist()], tensor.dim() == 0
    return None


def dims_map(
    ctx: NodeContext,
    function: Callable[..., Item],
    indices: Sequence[int],
) -> Dims | torch.Tensor | None:
    """Apply a Python int function item by item across shape inputs (broadcasting length 1).

    Returns None unless at least one input is a `Dims` and all are shape items,
    so the caller falls back to tensor ops.
    """
    values = [ctx.value(index) for index in indices]
    anchors = [value.anchor for value in values if isinstance(value, Dims)]
    if not anchors:
        return None
    operands = [shape_items(ctx, index) for index in indices]
    if any(operand is None for operand in operands):
        return None
    item_lists = [items for items, _ in operands]  # type: ignore[misc]
    length = max(len(items) for items in item_lists)
    if any(len(items) not in (1, length) for items in item_lists):
        return None
    broadcast = [items * length if len(items) == 1 else items for items in item_lists]
    results = [ctx.call(function, *row) for row in zip(*broadcast, strict=True)]
    scalar = all(is_scalar for _, is_scalar in operands)  # type: ignore[misc]
    dtype = next(value.dtype for value in values if isinstance(value, Dims))
    return ctx.dims(results, anchor=anchors[0], scalar=scalar, dtype=dtype)
