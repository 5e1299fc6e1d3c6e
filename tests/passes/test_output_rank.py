"""add_class_axis: [batch] outputs become [batch, 1]; other outputs, nodes and initializers stay as they are."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort

from akfc.passes.normalize import normalize
from akfc.passes.output_rank import add_class_axis

_SQUEEZED = """
<ir_version: 9, opset_import: ["" : 18]>
squeezed (float[N, 3] x) => (float[N] output) <float[3, 1] w = {1.0, -2.0, 0.5}, int64[1] axis = {1}> {
    y = MatMul(x, w)
    logit = Squeeze(y, axis)
    output = Sigmoid(logit)
}
"""


def test_add_class_axis_unsqueezes_rank1_output():
    model = onnx.parser.parse_model(_SQUEEZED)
    result, renamed = add_class_axis(model, ["output"])
    assert renamed == {"output": "output_column"}
    assert [node.op_type for node in result.graph.node] == ["MatMul", "Squeeze", "Sigmoid", "Unsqueeze"]
    assert [d.dim_param or d.dim_value for d in result.graph.output[0].type.tensor_type.shape.dim] == ["N", 1]
    x = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    after = ort.InferenceSession(result.SerializeToString()).run(None, {"x": x})[0]
    assert after.shape == (4, 1)
    assert np.array_equal(after[:, 0], before)


def test_add_class_axis_keeps_rank2_output():
    model = onnx.parser.parse_model(_SQUEEZED.replace("float[N] output", "float[N, 1] output").replace("logit = Squeeze(y, axis)", "logit = Identity(y)"))
    result, renamed = add_class_axis(model, ["output"])
    assert renamed == {"output": "output"}
    assert result.SerializeToString() == model.SerializeToString()


def test_normalize_gives_squeezed_logit_class_axis():
    normalized = normalize(onnx.parser.parse_model(_SQUEEZED), "rechub")
    assert (normalized.output, normalized.logit) == ("rechub/output_column", "rechub/logit_column")
    shapes = {v.name: len(v.type.tensor_type.shape.dim) for v in normalized.model.graph.output}
    assert shapes == {"rechub/output_column": 2, "rechub/logit_column": 2}
