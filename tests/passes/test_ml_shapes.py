"""Shapes for ai.onnx.ml ops that ONNX shape inference skips."""

from __future__ import annotations

import onnx
import onnx.parser

from akfc.passes.ml_shapes import complete_ml_shapes

_SCALER = onnx.parser.parse_model(
    """
    <ir_version: 8, opset_import: ["" : 17, "ai.onnx.ml" : 3]>
    scaled (float[N, 3] x) => (float[N, 3] z) {
        y = ai.onnx.ml.Scaler <offset = [0.0, 1.0, 2.0], scale = [1.0, 0.5, 0.25]> (x)
        z = Relu(y)
    }
    """
)


def test_scaler_output_gets_input_shape():
    completed = complete_ml_shapes(_SCALER)
    values = {v.name: v for v in completed.graph.value_info}
    assert "y" in values
    dims = [d.dim_param or d.dim_value for d in values["y"].type.tensor_type.shape.dim]
    assert dims == ["N", 3]
    assert values["y"].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_input_model_unchanged():
    before = _SCALER.SerializeToString()
    complete_ml_shapes(_SCALER)
    assert _SCALER.SerializeToString() == before
