"""The lowering's contract: module signature, buffers and parameters, folding, errors."""

from __future__ import annotations

import copy
import io

import numpy as np
import onnx
import onnx.parser
import pytest
import torch

from akfc.errors import ModelError
from akfc.lower import lower, lowering_info
from akfc.lower.backend import LoweringBackend

LINEAR = """
<ir_version: 8, opset_import: ["" : 17]>
linear (float[N, 4] x) => (float[N, 2] y)
<float[2, 4] weight = {1, 2, 3, 4, 5, 6, 7, 8}, float[2] bias = {0.5, -0.5}>
{
    y = Gemm<transB = 1>(x, weight, bias)
}
"""

# The legacy exporter's x.view(x.size(0), -1): a shape vector built from Shape at run time.
VIEW_BATCH = """
<ir_version: 8, opset_import: ["" : 17]>
view (float[N, 3, 2] x) => (float[N, 6] y)
{
    shape = Shape(x)
    zero = Constant<value = int64 {0}>()
    batch = Gather<axis = 0>(shape, zero)
    axes = Constant<value = int64[1] {0}>()
    batch_1d = Unsqueeze(batch, axes)
    rest = Constant<value = int64[1] {-1}>()
    target = Concat<axis = 0>(batch_1d, rest)
    y = Reshape(x, target)
}
"""


def _parse(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    return model


def _model(nodes, inputs, outputs, initializers=(), opset=17, name="graph") -> onnx.ModelProto:
    graph = onnx.helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])


def _tensor_info(name, elem_type=onnx.TensorProto.FLOAT, shape=None):
    return onnx.helper.make_tensor_value_info(name, elem_type, shape)


def test_forward_returns_tuple():
    module = lower(_parse(LINEAR))
    outputs = module(torch.ones(3, 4))
    assert isinstance(outputs, tuple)
    assert len(outputs) == 1
    assert outputs[0].tolist() == [[10.5, 25.5]] * 3


def test_forward_keeps_output_order():
    nodes = [
        onnx.helper.make_node("Relu", ["x"], ["b"]),
        onnx.helper.make_node("Neg", ["x"], ["a"]),
    ]
    model = _model(nodes, [_tensor_info("x", shape=[2])], [_tensor_info("a", shape=[2]), _tensor_info("b", shape=[2])])
    module = lower(model)
    negated, rectified = module(torch.tensor([-1.0, 2.0]))
    assert negated.tolist() == [1.0, -2.0]
    assert rectified.tolist() == [0.0, 2.0]
    assert lowering_info(module).output_names == ("a", "b")


def test_arguments_by_position_or_keyword():
    nodes = [onnx.helper.make_node("Sub", ["x:0", "self"], ["y"])]
    inputs = [_tensor_info("x:0", shape=[1]), _tensor_info("self", shape=[1])]
    module = lower(_model(nodes, inputs, [_tensor_info("y", shape=[1])]))
    info = lowering_info(module)
    assert info.input_names == ("x:0", "self")
    assert info.argument_names == ("x_0", "input_self")
    assert module(torch.tensor([5.0]), torch.tensor([2.0]))[0].tolist() == [3.0]
    assert module(input_self=torch.tensor([2.0]), x_0=torch.tensor([5.0]))[0].tolist() == [3.0]


def test_initializers_become_frozen_buffers():
    module = lower(_parse(LINEAR))
    info = lowering_info(module)
    assert info.initializers == {"weight": "w_weight", "bias": "w_bias"}
    assert dict(module.named_parameters()) == {}
    assert sorted(name for name, _ in module.named_buffers()) == ["w_bias", "w_weight"]
    assert module.get_buffer("w_bias").tolist() == [0.5, -0.5]
    assert not module.get_buffer("w_weight").requires_grad


def test_trainable_makes_parameters():
    module = lower(_parse(LINEAR), trainable=True)
    parameters = dict(module.named_parameters())
    assert sorted(parameters) == ["w_bias", "w_weight"]
    loss = module(torch.ones(3, 4))[0].sum()
    loss.backward()
    assert parameters["w_bias"].grad.tolist() == [3.0, 3.0]
    assert parameters["w_weight"].grad.tolist() == [[3.0] * 4] * 2


def test_trainable_parameters_do_not_alias_the_model():
    model = _parse(LINEAR)
    module = lower(model, trainable=True)
    with torch.no_grad():
        module.get_parameter("w_bias").add_(1.0)
    assert onnx.numpy_helper.to_array(model.graph.initializer[1]).tolist() == [0.5, -0.5]


def test_constant_shape_folds_into_code():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    fold (float[N, 6] x) => (float[N, 3, 2] y)
    <int64[3] shape = {0, 3, 2}>
    {
        y = Reshape(x, shape)
    }
    """
    module = lower(_parse(text))
    assert "reshape([size, 3, 2])" in module.code
    assert lowering_info(module).initializers == {}
    assert module(torch.arange(12.0).reshape(2, 6))[0].shape == (2, 3, 2)


def test_shape_chain_stays_symbolic():
    module = lower(_parse(VIEW_BATCH))
    assert "reshape([size, -1])" in module.code
    assert "dims_tensor" not in module.code
    for batch in (1, 5):
        assert module(torch.ones(batch, 3, 2))[0].shape == (batch, 6)


def test_runtime_shape_input():
    nodes = [onnx.helper.make_node("Reshape", ["x", "shape"], ["y"])]
    inputs = [_tensor_info("x", shape=[2, 6]), _tensor_info("shape", onnx.TensorProto.INT64, [3])]
    module = lower(_model(nodes, inputs, [_tensor_info("y", shape=None)]))
    assert "akfc_lower_runtime_reshape" in module.code
    (output,) = module(torch.arange(12.0).reshape(2, 6), torch.tensor([0, 2, -1]))
    assert output.shape == (2, 2, 3)


def test_constant_output_is_a_copy():
    nodes = [onnx.helper.make_node("Constant", [], ["y"], value_floats=[1.0, 2.0])]
    module = lower(_model(nodes, [], [_tensor_info("y", shape=[2])]))
    (first,) = module()
    first.add_(10.0)
    assert module()[0].tolist() == [1.0, 2.0]


def test_module_follows_dtype():
    module = lower(_parse(LINEAR)).double()
    (output,) = module(torch.ones(1, 4, dtype=torch.float64))
    assert output.dtype == torch.float64
    assert output.tolist() == [[10.5, 25.5]]


def test_copy_and_pickle_keep_info():
    module = lower(_parse(VIEW_BATCH))
    copied = copy.deepcopy(module)
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for other in (copied, loaded):
        assert lowering_info(other) == lowering_info(module)
        assert other(torch.ones(4, 3, 2))[0].shape == (4, 6)


def test_pickle_with_runtime_helper():
    nodes = [onnx.helper.make_node("Reshape", ["x", "shape"], ["y"])]
    inputs = [_tensor_info("x", shape=[2, 6]), _tensor_info("shape", onnx.TensorProto.INT64, [2])]
    module = lower(_model(nodes, inputs, [_tensor_info("y", shape=None)]))
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded(torch.ones(2, 6), torch.tensor([3, 4]))[0].shape == (3, 4)


def test_one_fx_call_per_simple_node():
    module = lower(_parse(LINEAR))
    calls = [node for node in module.graph.nodes if node.op in ("call_function", "call_method")]
    assert [node.target for node in calls] == [torch.nn.functional.linear]
    assert calls[0].meta["onnx_op_type"] == "Gemm"


def test_lowering_info_rejects_other_modules():
    with pytest.raises(ValueError, match="was not built by akfc.lower.lower"):
        lowering_info(torch.nn.Linear(2, 2))


# -- errors --------------------------------------------------------------------------------------


def test_unsupported_op_error():
    nodes = [onnx.helper.make_node("Det", ["x"], ["y"], name="determinant")]
    model = _model(nodes, [_tensor_info("x", shape=[3, 3])], [_tensor_info("y", shape=[])], opset=22)
    with pytest.raises(ModelError) as error:
        lower(model, source="models/income.onnx")
    assert str(error.value) == (
        "models/income.onnx: node 'determinant' is Det version 22 (opset 22), which akfc cannot lower to "
        "torch; `akfc ops` lists the supported ops, versions and attribute values"
    )


def test_unsupported_version_error():
    nodes = [onnx.helper.make_node("Softmax", ["x"], ["y"], name="probabilities")]
    model = _model(nodes, [_tensor_info("x", shape=[2, 3])], [_tensor_info("y", shape=[2, 3])], opset=11, name="head")
    with pytest.raises(ModelError) as error:
        lower(model)
    assert str(error.value) == (
        "head: node 'probabilities' is Softmax version 11 (opset 11), which akfc cannot lower to torch: "
        "supported versions are 13 (model opsets 13-28); convert the model with "
        "onnx.version_converter.convert_version; `akfc ops` lists the supported ops, versions and attribute values"
    )


def test_unsupported_domain_error():
    node = onnx.helper.make_node(
        "Normalizer", ["x"], ["y"], name="normalizer", domain="ai.onnx.ml", norm="L1"
    )
    graph = onnx.helper.make_graph([node], "sklearn", [_tensor_info("x", shape=[2, 3])], [_tensor_info("y", shape=[2, 3])])
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("ai.onnx.ml", 3)]
    )
    with pytest.raises(ModelError) as error:
        lower(model)
    assert str(error.value) == (
        "sklearn: node 'normalizer' is Normalizer from domain 'ai.onnx.ml', which akfc cannot lower to torch "
        "(only the default ONNX domain is supported; such ops can run in onnxruntime inside a stem); "
        "`akfc ops` lists the supported ops, versions and attribute values"
    )


def test_batchnorm_training_mode_error():
    text = """
    <ir_version: 8, opset_import: ["" : 15]>
    bn (float[N, 2] x) => (float[N, 2] y, float[2] running_mean, float[2] running_var)
    <float[2] scale = {1, 1}, float[2] bias = {0, 0}, float[2] mean = {0, 0}, float[2] var = {1, 1}>
    {
        y, running_mean, running_var = BatchNormalization<training_mode = 1>(x, scale, bias, mean, var)
    }
    """
    model = _parse(text)
    model.graph.node[0].name = "bn1"
    with pytest.raises(ModelError) as error:
        lower(model, source="deep.onnx")
    assert str(error.value) == (
        "deep.onnx: node 'bn1' (BatchNormalization version 15, opset 15): attribute training_mode=1 (batch "
        "statistics) is not supported: components are lowered for inference with their running statistics; "
        "export the model in eval mode; `akfc ops` lists the supported ops, versions and attribute values"
    )


def test_gelu_approximation_error():
    nodes = [onnx.helper.make_node("Gelu", ["x"], ["y"], name="act", approximate="sigmoid")]
    model = _model(nodes, [_tensor_info("x", shape=[2])], [_tensor_info("y", shape=[2])], opset=20, name="g")
    with pytest.raises(ModelError, match=r"^g: node 'act' \(Gelu version 20, opset 20\): attribute approximate="):
        lower(model)


def test_string_input_error():
    nodes = [onnx.helper.make_node("Identity", ["x"], ["y"])]
    model = _model(nodes, [_tensor_info("x", onnx.TensorProto.STRING, [2])], [_tensor_info("y", onnx.TensorProto.STRING, [2])])
    with pytest.raises(ModelError, match="graph input 'x' has element type STRING, which torch cannot represent"):
        lower(model)


def test_unsorted_graph_error():
    nodes = [
        onnx.helper.make_node("Relu", ["h"], ["y"], name="second"),
        onnx.helper.make_node("Neg", ["x"], ["h"], name="first"),
    ]
    model = _model(nodes, [_tensor_info("x", shape=[2])], [_tensor_info("y", shape=[2])])
    with pytest.raises(ModelError, match=r"node 'second' \(Relu\) reads tensor 'h', which no graph input"):
        lower(model)


def test_lower_rejects_non_models():
    with pytest.raises(TypeError, match="expects an onnx.ModelProto, got str"):
        lower("model.onnx")


# -- backend -------------------------------------------------------------------------------------


def test_backend_runs_inputs_by_name():
    rep = LoweringBackend.prepare(_parse(LINEAR), "CPU")
    (output,) = rep.run({"x": np.ones((2, 4), dtype=np.float32)})
    assert output.dtype == np.float32
    assert output.tolist() == [[10.5, 25.5]] * 2


def test_backend_run_node():
    node = onnx.helper.make_node("Clip", ["x", "low", "high"], ["y"])
    values = np.array([-2.0, 0.5, 3.0], dtype=np.float32)
    (output,) = LoweringBackend.run_node(node, [values, np.float32(0.0), np.float32(1.0)])
    assert output.tolist() == [0.0, 0.5, 1.0]


def test_backend_devices():
    assert LoweringBackend.supports_device("CPU")
    assert LoweringBackend.supports_device("CUDA") == torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_module_follows_cuda_device():
    module = lower(_parse(VIEW_BATCH)).to("cuda")
    (output,) = module(torch.ones(4, 3, 2, device="cuda"))
    assert output.device.type == "cuda"
    linear = lower(_parse(LINEAR)).to("cuda")
    (result,) = linear(torch.ones(3, 4, device="cuda"))
    assert result.cpu().tolist() == [[10.5, 25.5]] * 3
