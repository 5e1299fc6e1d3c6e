"""Values of ONNX tensor names while their graph is being lowered.

Code generation partially evaluates the graph. Each ONNX value is one of:

- an `fx.Node`: a tensor computed at run time;
- a `Constant`: a tensor known now (an initializer, a Constant node's value,
  or the result of an op whose inputs were all known);
- a `Dims`: a small int64 vector (or scalar) assembled from tensor sizes, as
  the exporters' Shape -> Gather -> Concat -> Reshape chains build them. Its
  items are Python ints or FX nodes that yield ints at run time, so a Reshape
  fed by such a chain becomes `x.reshape(x.size(0), -1)` rather than a
  round trip through a device tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

__all__ = ["Constant", "Dims", "Item", "Operand", "Value"]

# One element of a Dims vector: known now, or an FX node yielding a Python int.
Item = int | fx.Node

# An argument to a torch call in generated code: a run-time tensor, or a tensor
# known now (it turns into a buffer if the call happens at run time).
Operand = fx.Node | torch.Tensor


@dataclass(eq=False)
class Constant:
    """A tensor whose value is known while the graph is generated."""

    tensor: torch.Tensor
    # The ONNX initializer this is, if any. Initializers reach run time through
    # their own buffer or parameter and are never folded into other constants,
    # so that a trained parameter still maps back to its initializer.
    initializer: str | None = None


@dataclass(eq=False)
class Dims:
    """An int vector (or scalar) whose items are sizes of run-time tensors."""

    items: tuple[Item, ...]
    # Rank 0 when True (then `items` has exactly one item), rank 1 otherwise.
    scalar: bool
    dtype: torch.dtype
    # A run-time tensor whose device the vector takes when it must become a tensor.
    anchor: fx.Node

    def is_static(self) -> bool:
        return all(isinstance(item, int) for item in self.items)


Value = fx.Node | Constant | Dims
