"""Dataflow analysis: tensor classes, batch layout from the probe, layers and parameters."""

from __future__ import annotations

import onnx.parser

from akfc.passes import analyze, normalize
from akfc.passes.dataflow import CONSTANT, DATA, INPUT, SHAPE


def test_classes_shape_chain(shape_chain):
    flow = analyze(shape_chain)
    classes = flow.tensor_class
    assert classes["x"] == INPUT
    assert [classes[name] for name in ("s", "b", "bu", "flat_shape", "split_shape")] == [SHAPE] * 5
    assert [classes[name] for name in ("w1", "zero", "tail")] == [CONSTANT] * 3
    assert [classes[name] for name in ("flat", "h1", "r", "pooled", "y")] == [DATA] * 5


def test_batch_layout(shape_chain):
    flow = analyze(shape_chain)
    assert flow.batch_dim == "N"
    assert flow.tensors["x"].row_shape == (3, 4)
    assert flow.tensors["flat"].row_shape == (12,)
    assert flow.tensors["flat"].width == 12
    assert flow.tensors["r"].row_shape == (2, 4)
    assert flow.probe_shapes["flat"] == ((2, 12), (3, 12))


def test_batch_folded_into_other_axis():
    model = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
folded (float[N, 3, 4] x) => (float[N, 12] y)
<int64[2] rows = {-1, 4}, int64[2] back = {-1, 12}>
{
    stacked = Reshape(x, rows)
    r = Relu(stacked)
    y = Reshape(r, back)
}
""")
    flow = analyze(model)
    assert flow.probe_shapes["stacked"] == ((6, 4), (9, 4))
    assert not flow.tensors["stacked"].batched
    assert flow.tensors["stacked"].width is None
    assert flow.tensors["y"].batched


def test_static_batch():
    model = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
fixed (float[8, 4] x) => (float[8, 4] y)
{
    y = Relu(x)
}
""")
    flow = analyze(model)
    assert flow.batch_dim == 8
    assert flow.tensors["y"].row_shape == (4,)


def test_layers_and_params(two_branch):
    flow = analyze(normalize(two_branch).model)
    layers = [node.op_type for index, node in enumerate(flow.nodes) if flow.is_layer(index)]
    assert layers == ["MatMul"] * 4
    gather = next(index for index, node in enumerate(flow.nodes) if node.op_type == "Gather")
    assert not flow.is_layer(gather)
    assert flow.params(gather) == 10 * 4


def test_live_nodes_skip_dead_branch():
    model = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
dead (float[N, 4] x) => (float[N, 4] y)
{
    unused = Neg(x)
    y = Relu(x)
}
""")
    flow = analyze(model)
    assert flow.live == frozenset({1})
    assert flow.data_consumers("x") == (1,)
