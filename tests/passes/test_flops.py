"""FLOPs counting: exact for MatMul, Gemm, Conv and Einsum, by element count otherwise, per row via the probe."""

from __future__ import annotations

import onnx
import onnx.helper
import pytest

from akfc.passes import analyze, node_flops, normalize

SHAPES = {
    "x": (5, 4),
    "w": (4, 8),
    "h": (5, 8),
    "b": (8,),
    "images": (5, 3, 10, 10),
    "kernel": (16, 3, 3, 3),
    "maps": (5, 16, 8, 8),
    "cube": (5, 6, 4),
    "pooled": (5, 4),
}


def _flops(op_type: str, inputs: list[str], outputs: list[str], **attributes) -> int:
    node = onnx.helper.make_node(op_type, inputs, outputs, **attributes)
    return node_flops(node, SHAPES.get)


def test_flops_matmul():
    assert _flops("MatMul", ["x", "w"], ["h"]) == 2 * 5 * 8 * 4


def test_flops_gemm_with_bias():
    assert _flops("Gemm", ["x", "w", "b"], ["h"]) == 2 * 5 * 8 * 4 + 5 * 8


def test_flops_gemm_transposed():
    shapes = {"a": (4, 5), "w": (4, 8), "h": (5, 8)}
    node = onnx.helper.make_node("Gemm", ["a", "w"], ["h"], transA=1)
    assert node_flops(node, shapes.get) == 2 * 5 * 8 * 4


def test_flops_conv():
    assert _flops("Conv", ["images", "kernel"], ["maps"]) == 2 * (5 * 16 * 8 * 8) * 3 * 3 * 3


def test_flops_einsum():
    assert _flops("Einsum", ["x", "w"], ["h"], equation="bi,io->bo") == 2 * 5 * 8 * 4


def test_flops_elementwise():
    assert _flops("Relu", ["h"], ["h"]) == 40
    assert _flops("Add", ["h", "b"], ["h"]) == 40


def test_flops_reduction_counts_inputs():
    assert _flops("ReduceSum", ["cube"], ["pooled"]) == 5 * 6 * 4


@pytest.mark.parametrize("op_type", ["Reshape", "Transpose", "Gather", "Concat", "Cast", "Shape"])
def test_flops_data_movement_free(op_type):
    assert _flops(op_type, ["x", "w"], ["h"]) == 0


def test_flops_unknown_shape():
    assert _flops("MatMul", ["x", "unknown"], ["missing"]) == 0


def test_flops_per_row(chain):
    flow = analyze(normalize(chain).model)
    per_node = {node.name: flops for node, flops in zip(flow.nodes, flow.node_flops)}
    assert per_node["MatMul_0"] == 2 * 4 * 8
    assert per_node["Add_1"] == 8
    assert per_node["Relu_2"] == 8
    assert per_node["MatMul_9"] == 2 * 8 * 1
    assert per_node["Sigmoid_10"] == 1
    assert sum(flow.node_flops) == 64 + 16 + 2 * (128 + 16) + 16 + 1
