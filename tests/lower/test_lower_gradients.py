"""Gradients through lowered ops match finite differences (torch.autograd.gradcheck, float64)."""

from __future__ import annotations

import onnx
import onnx.parser
import pytest
import torch

from akfc.lower import lower

# One model per op; every float input is checked. Initializers stay frozen
# buffers, so gradients flow to the graph inputs only (as for a frozen block).
MODELS = {
    "gemm": """
        gemm (double[3, 4] a, double[5, 4] b, double[5] c) => (double[3, 5] y)
        {
            y = Gemm<alpha = 0.5, beta = 2.0, transB = 1>(a, b, c)
        }
    """,
    "gemm_linear": """
        linear (double[3, 4] x) => (double[3, 2] y)
        <double[2, 4] weight = {0.1, -0.2, 0.3, 0.4, 0.5, -0.6, 0.7, 0.8}, double[2] bias = {0.5, -0.5}>
        {
            y = Gemm<transB = 1>(x, weight, bias)
        }
    """,
    "matmul": """
        matmul (double[2, 3, 4] a, double[4, 5] b) => (double[2, 3, 5] y)
        {
            y = MatMul(a, b)
        }
    """,
    "concat": """
        concat (double[2, 3] a, double[2, 1] b, double[2, 2] c) => (double[2, 6] y)
        {
            y = Concat<axis = -1>(a, b, c)
        }
    """,
    "gather": """
        gather (double[6, 3] table, int64[2, 2] ids) => (double[2, 2, 3] y)
        {
            y = Gather<axis = 0>(table, ids)
        }
    """,
    "gather_constant_ids": """
        lookup (double[4, 5] x) => (double[4, 2] y)
        <int64[2] ids = {3, -1}>
        {
            y = Gather<axis = 1>(x, ids)
        }
    """,
    "softmax": """
        softmax (double[3, 4] x) => (double[3, 4] y)
        {
            y = Softmax<axis = 0>(x)
        }
    """,
    "layer_normalization": """
        layer_norm (double[2, 3, 4] x, double[3, 4] scale, double[3, 4] bias) => (double[2, 3, 4] y)
        {
            y = LayerNormalization<axis = 1, epsilon = 0.001>(x, scale, bias)
        }
    """,
    # Asking for the statistics takes the written-out path instead of F.layer_norm.
    "layer_normalization_statistics": """
        layer_norm (double[2, 5] x, double[5] scale) => (double[2, 5] y, float[2, 1] mean, float[2, 1] inv_std)
        {
            y, mean, inv_std = LayerNormalization<axis = -1>(x, scale)
        }
    """,
    "batch_normalization_frozen": """
        batch_norm (double[4, 3] x) => (double[4, 3] y)
        <double[3] scale = {1.5, 0.5, 2}, double[3] bias = {0, 1, -1}, double[3] mean = {0.1, 0.2, 0.3},
         double[3] var = {1, 2, 0.5}>
        {
            y = BatchNormalization(x, scale, bias, mean, var)
        }
    """,
    "batch_normalization": """
        batch_norm (double[4, 3, 2] x, double[3] scale, double[3] bias, double[3] mean, double[3] var)
            => (double[4, 3, 2] y)
        {
            y = BatchNormalization<epsilon = 0.01>(x, scale, bias, mean, var)
        }
    """,
}


def _model(name: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 17]>\n' + MODELS[name])
    onnx.checker.check_model(model, full_check=True)
    return model


def _inputs(model: onnx.ModelProto, generator: torch.Generator) -> list[torch.Tensor]:
    tensors = []
    for value in model.graph.input:
        shape = [dim.dim_value for dim in value.type.tensor_type.shape.dim]
        if value.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            tensors.append(torch.randint(-shape[0], shape[0], shape, generator=generator))
        elif value.name == "var":
            tensors.append(torch.rand(shape, generator=generator, dtype=torch.float64) + 0.5)
        else:
            tensors.append(torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_())
    return tensors


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradients_match_finite_differences(name):
    model = _model(name)
    module = lower(model)
    inputs = _inputs(model, torch.Generator().manual_seed(0))
    if name == "gather":
        # Gather's indices of the table rows: any value in [-6, 6).
        inputs[1] = torch.tensor([[0, -1], [5, 2]])
    # Outputs other than float64 (LayerNormalization's float32 statistics) are not checked.
    checked = [index for index, value in enumerate(model.graph.output) if value.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE]

    def function(*tensors):
        outputs = module(*tensors)
        return tuple(outputs[index] for index in checked)

    assert torch.autograd.gradcheck(function, tuple(inputs))


def test_gradients_reach_trainable_initializers():
    model = _model("gemm_linear")
    module = lower(model, trainable=True)
    weight, bias = module.get_parameter("w_weight"), module.get_parameter("w_bias")
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    (output,) = module(x)
    output.sum().backward()
    assert torch.allclose(weight.grad, x.sum(0).expand(2, 4))
    assert bias.grad.tolist() == [3.0, 3.0]


def test_trainable_batch_normalization_backward():
    module = lower(_model("batch_normalization_frozen"), trainable=True)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    (output,) = module(x)
    output.square().sum().backward()
    parameters = dict(module.named_parameters())
    assert sorted(parameters) == ["w_bias", "w_mean", "w_scale", "w_var"]
    assert all(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in parameters.values())
    assert x.grad is not None
