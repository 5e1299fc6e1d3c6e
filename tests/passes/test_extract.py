"""Extraction: standalone component models whose chain reproduces the source exactly."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest

from akfc.passes import decompose, extract_component, extract_components, normalize, run_components

GRAPHS = ["chain", "two_branch", "wide_deep", "residual", "two_outputs", "shared_output", "unused_input", "shape_chain"]


def _prepare(model: onnx.ModelProto):
    output = "p" if model.graph.name == "shared_output" else None
    source = normalize(model, "src", output=output)
    decomposition = decompose(source.model)
    return source, decomposition, extract_components(source.model, decomposition)


@pytest.mark.parametrize("graph", GRAPHS)
def test_recompose_exact(graph, request, run, feeds):
    model = request.getfixturevalue(graph)
    source, decomposition, components = _prepare(model)
    inputs = feeds(model, rows=33, seed=1)
    chained = run_components(components, {f"src/{name}": values for name, values in inputs.items() if f"src/{name}" in source.input_names})
    expected = run(source.model, {name: inputs[original] for name, original in source.input_names.items()})
    for name, values in expected.items():
        np.testing.assert_array_equal(chained[name], values)
    assert len(components) == decomposition.levels + 2


@pytest.mark.parametrize("graph", GRAPHS)
def test_recompose_optimized(graph, request, run, feeds):
    model = request.getfixturevalue(graph)
    source, _, components = _prepare(model)
    inputs = {f"src/{name}": values for name, values in feeds(model, rows=9).items() if f"src/{name}" in source.input_names}
    chained = run_components(components, inputs, optimize=True)
    expected = run(source.model, inputs)
    for name, values in expected.items():
        np.testing.assert_allclose(chained[name], values, rtol=0, atol=1e-6)


def test_component_interface(chain):
    source, decomposition, components = _prepare(chain)
    for component, model in zip(decomposition.components, components):
        graph = model.graph
        assert [value.name for value in graph.input] == [spec.name for spec in component.inputs]
        assert [value.name for value in graph.output] == [spec.name for spec in component.outputs]
        for value in [*graph.input, *graph.output]:
            assert value.type.tensor_type.shape.dim[0].dim_param == "N"
        assert {entry.key: entry.value for entry in model.metadata_props} == {"akfc.component": component.name}
        assert model.opset_import == source.model.opset_import
        assert model.ir_version == source.model.ir_version
    block1 = components[1].graph
    assert [tensor.name for tensor in block1.initializer] == ["src/w1", "src/b1"]
    assert [value.type.tensor_type.shape.dim[1].dim_value for value in block1.output] == [8]


def test_identity_component(two_outputs, run):
    source, decomposition, components = _prepare(two_outputs)
    assert decomposition.blocks[1].identity
    identity = components[2]
    assert len(identity.graph.node) == 0
    assert [value.name for value in identity.graph.input] == [value.name for value in identity.graph.output] == ["src/h1"]
    rows = np.arange(16, dtype=np.float32).reshape(2, 8)
    np.testing.assert_array_equal(run(identity, {"src/h1": rows})["src/h1"], rows)


def test_pass_through_side_term(wide_deep):
    _, decomposition, components = _prepare(wide_deep)
    block2 = components[2].graph
    assert "src/w" in [value.name for value in block2.input]
    assert "src/w" in [value.name for value in block2.output]
    assert all("src/w" not in node.output for node in block2.node)


def test_rebuilt_shape_node(shape_chain):
    _, decomposition, components = _prepare(shape_chain)
    block3 = components[3].graph
    assert [value.name for value in block3.input] == ["src/h2"]
    shapes = [node for node in block3.node if node.op_type == "Shape"]
    assert [list(node.input) for node in shapes] == [["src/h2"]]
    assert {attribute.name: attribute.i for attribute in shapes[0].attribute} == {"start": 0, "end": 1}
    assert "src/x" not in {name for node in block3.node for name in node.input}


def test_stem_keeps_its_own_shape_nodes(shape_chain):
    _, _, components = _prepare(shape_chain)
    stem = components[0].graph
    assert [list(node.input) for node in stem.node if node.op_type == "Shape"] == [["src/x"]]


def test_extract_by_name(chain):
    source, decomposition, _ = _prepare(chain)
    head = extract_component(source.model, decomposition, "head")
    assert [node.op_type for node in head.graph.node] == ["MatMul", "Sigmoid"]


def test_extract_rejects_other_model(chain, residual):
    _, decomposition, _ = _prepare(chain)
    other = normalize(residual, "src").model
    with pytest.raises(ValueError, match="computed for a different model"):
        extract_component(other, decomposition, "stem")


def test_run_components_missing_feed(chain):
    _, _, components = _prepare(chain)
    with pytest.raises(KeyError, match=r"component inputs \['src/h1'\] are not computed"):
        run_components(components[2:], {})


def test_sklearn_pipeline(run):
    model = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17, "ai.onnx.ml" : 3]>
skl (float[N, 2] x) => (int64[N] label, seq(map(int64, float)) output_probability)
{
    scaled = ai.onnx.ml.Scaler<offset=[1.0, -2.0], scale=[0.5, 2.0]>(x)
    label, probabilities = ai.onnx.ml.LinearClassifier<coefficients=[0.5, -0.25, -0.5, 0.25], intercepts=[0.1, -0.1], classlabels_ints=[0, 1], post_transform="SOFTMAX">(scaled)
    output_probability = ai.onnx.ml.ZipMap<classlabels_int64s=[0, 1]>(probabilities)
}
""")
    source, decomposition, components = _prepare(model)
    assert source.kind == "binary"
    assert [frontier.names for frontier in decomposition.frontiers] == [("src/scaled",)] * 4
    assert decomposition.head.ops == {"LinearClassifier": 1}
    assert all(block.identity for block in decomposition.blocks)
    rows = np.array([[0.5, 1.0], [3.0, -1.0], [-2.0, 0.25]], dtype=np.float32)
    chained = run_components(components, {"src/x": rows})["src/probabilities"]
    np.testing.assert_array_equal(chained, run(source.model, {"src/x": rows})["src/probabilities"])


def test_static_batch(run):
    model = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
fixed (float[8, 4] x) => (float[8, 1] y)
<float[4, 4] w1 = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1}, float[4, 4] w2 = {0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0}, float[4, 1] w3 = {1, 2, 3, 4}>
{
    m1 = MatMul(x, w1)
    h1 = Relu(m1)
    m2 = MatMul(h1, w2)
    h2 = Tanh(m2)
    y = MatMul(h2, w3)
}
""")
    source, decomposition, components = _prepare(model)
    assert decomposition.batch_dim == 8
    assert decomposition.frontiers[1].tensors[0].shape == (8, 4)
    assert [dim.dim_value for dim in components[1].graph.output[0].type.tensor_type.shape.dim] == [8, 4]
    rows = np.linspace(-1, 1, 32, dtype=np.float32).reshape(8, 4)
    np.testing.assert_array_equal(run_components(components, {"src/x": rows})["src/y"], run(source.model, {"src/x": rows})["src/y"])
