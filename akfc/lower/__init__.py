"""Lower ONNX components to torch: FX code generation over a fixed op table.

`lower(model)` turns an ONNX model (a component cut out of a source) into a
`torch.fx.GraphModule` whose forward() calls torch ops directly; see
`akfc.lower.codegen`. `supported_ops()` is the op table that `akfc ops`
prints, and `akfc.lower.backend` runs the lowering as an ONNX backend for the
onnx package's conformance tests.
"""

from __future__ import annotations

from akfc.lower.codegen import LoweringInfo, lower, lowering_info
from akfc.lower.registry import OpSpec, supported_opsets, supported_ops

__all__ = ["LoweringInfo", "OpSpec", "lower", "lowering_info", "supported_ops", "supported_opsets"]
