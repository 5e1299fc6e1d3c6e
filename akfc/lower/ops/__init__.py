"""Lowering functions for ONNX ops, one module per family; importing registers them.

Each function takes a `NodeContext` and returns one value per ONNX output:
an FX node, a tensor known now, or a `Dims` shape vector.
"""

from __future__ import annotations

from akfc.lower.ops import elementwise, linalg, nn, reduce, shape, tensor

__all__ = ["elementwise", "linalg", "nn", "reduce", "shape", "tensor"]
