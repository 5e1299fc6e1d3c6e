"""Normalisation: task output, pruning, Identity/Dropout removal, folding, logit, kind and name prefixes."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest

from akfc.errors import ModelError
from akfc.passes import (
    expose_logit,
    fold_constants,
    name_nodes,
    normalize,
    prefix_names,
    prune,
    remove_identities,
    resolve_output,
)


def _ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def _sigmoid_inverse(probability: np.ndarray) -> np.ndarray:
    return np.log(probability / (1 - probability))


def test_normalize_chain(chain, run, feeds):
    source = normalize(chain, "income_mlp")
    assert source.output == "income_mlp/y"
    assert source.logit == "income_mlp/z"
    assert source.activation == "sigmoid"
    assert (source.kind, source.inferred_kind) == ("binary", "binary")
    assert dict(source.input_names) == {"income_mlp/x": "x"}
    assert [value.name for value in source.model.graph.output] == ["income_mlp/y", "income_mlp/z"]
    inputs = feeds(chain)
    outputs = run(source.model, {"income_mlp/x": inputs["x"]})
    np.testing.assert_array_equal(outputs["income_mlp/y"], run(chain, inputs)["y"])
    np.testing.assert_allclose(_sigmoid_inverse(outputs["income_mlp/y"]), outputs["income_mlp/z"], atol=1e-4)


def test_normalize_prefixes_every_name(two_branch):
    model = normalize(two_branch, "deepfm").model
    graph = model.graph
    names = [node.name for node in graph.node]
    names += [name for node in graph.node for name in [*node.input, *node.output] if name]
    names += [tensor.name for tensor in graph.initializer]
    names += [value.name for value in [*graph.input, *graph.output, *graph.value_info]]
    assert all(name.startswith("deepfm/") for name in names)
    assert len({node.name for node in graph.node}) == len(graph.node)


def test_normalize_keeps_names_without_id(chain):
    source = normalize(chain)
    assert source.output == "y"
    assert [node.name for node in source.model.graph.node][:2] == ["MatMul_0", "Add_1"]


def test_normalize_leaves_input_unchanged(two_branch):
    before = two_branch.SerializeToString()
    normalize(two_branch, "s")
    assert two_branch.SerializeToString() == before


def test_normalize_kind_override(chain):
    source = normalize(chain, kind="regression")
    assert (source.kind, source.inferred_kind) == ("regression", "binary")


def test_normalize_rejects_unknown_kind(chain):
    with pytest.raises(ModelError, match="unknown task kind 'ranking'; choose one of binary, multiclass, regression"):
        normalize(chain, kind="ranking")


def test_normalize_rejects_bad_source_id(chain):
    with pytest.raises(ModelError, match="source id 'my model' of model must be letters"):
        normalize(chain, "my model")


def test_normalize_regression_logit_is_output(residual):
    source = normalize(residual, "r")
    assert (source.output, source.logit, source.activation, source.kind) == ("r/y", "r/y", None, "regression")
    assert [value.name for value in source.model.graph.output] == ["r/y"]


def test_normalize_multiclass(two_outputs):
    source = normalize(two_outputs, "m")
    assert (source.output, source.logit, source.activation, source.kind) == ("m/probabilities", "m/z", "softmax", "multiclass")
    assert "ArgMax" not in _ops(source.model)


def test_normalize_drops_unused_input(unused_input, caplog):
    caplog.set_level("INFO", logger="akfc.passes.normalize")
    source = normalize(unused_input, "u")
    assert [value.name for value in source.model.graph.input] == ["u/x"]
    assert dict(source.input_names) == {"u/x": "x"}
    assert "graph inputs extra do not reach the task output; dropped" in caplog.text


def test_normalize_shared_output_as_probability(shared_output):
    source = normalize(shared_output, "s", output="p")
    assert [value.name for value in source.model.graph.output] == ["s/p", "s/z"]
    assert (source.logit, source.kind) == ("s/z", "binary")


def test_normalize_shared_output_as_score(shared_output):
    source = normalize(shared_output, "s", output="z")
    assert [value.name for value in source.model.graph.output] == ["s/z"]
    assert "Sigmoid" not in _ops(source.model)
    assert (source.logit, source.kind) == ("s/z", "regression")


def test_resolve_output_single(chain):
    assert resolve_output(chain) == "y"


def test_resolve_output_skips_label(two_outputs):
    assert resolve_output(two_outputs) == "probabilities"


def test_resolve_output_rejects_label(two_outputs):
    with pytest.raises(ModelError, match=r"output 'label' is not a floating-point score tensor \(label \(int64 \[N\]\)\)"):
        resolve_output(two_outputs, "label")


def test_resolve_output_ambiguous(shared_output):
    with pytest.raises(ModelError, match=r"2 outputs \(z \(float \[N, 1\]\), p \(float \[N, 1\]\)\) and 2 of them hold .* --output NAME"):
        resolve_output(shared_output)


def test_resolve_output_tf2onnx_suffix():
    model = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
tf (float[N, 4] x) => (float[N, 4] "Identity:0", int64[N] "Identity_1:0")
{
    "Identity:0" = Sigmoid(x)
    "Identity_1:0" = ArgMax<axis=1, keepdims=0>(x)
}
""")
    assert resolve_output(model, "Identity") == "Identity:0"
    assert resolve_output(model) == "Identity:0"


def _zipmap_classifier() -> onnx.ModelProto:
    return onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17, "ai.onnx.ml" : 3]>
skl (float[N, 2] x) => (int64[N] label, seq(map(int64, float)) output_probability)
{
    label, probabilities = ai.onnx.ml.LinearClassifier<coefficients=[0.5, -0.25, -0.5, 0.25], intercepts=[0.1, -0.1], classlabels_ints=[0, 1], post_transform="SOFTMAX">(x)
    output_probability = ai.onnx.ml.ZipMap<classlabels_int64s=[0, 1]>(probabilities)
}
""")


def test_resolve_output_through_zipmap():
    model = _zipmap_classifier()
    assert resolve_output(model) == "probabilities"
    assert resolve_output(model, "output_probability") == "probabilities"


def test_normalize_sklearn_classifier(run):
    model = _zipmap_classifier()
    source = normalize(model, "lr")
    assert (source.output, source.logit, source.activation, source.kind) == ("lr/probabilities", None, None, "binary")
    assert _ops(source.model) == ["LinearClassifier"]
    rows = np.array([[1.0, 2.0], [-1.0, 0.5]], dtype=np.float32)
    probabilities = run(source.model, {"lr/x": rows})["lr/probabilities"]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)


def test_remove_identities(run, feeds):
    model = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
copies (float[N, 4] x) => (float[N, 4] y, float[N, 4] x_copy)
{
    a = Identity(x)
    b = Relu(a)
    c = Dropout(b)
    d = Identity(c)
    y = Identity(d)
    x_copy = Identity(x)
}
""")
    cleaned = remove_identities(model)
    assert _ops(cleaned) == ["Relu", "Identity"]
    assert [value.name for value in cleaned.graph.output] == ["y", "x_copy"]
    assert list(cleaned.graph.node[0].output) == ["y"]
    inputs = feeds(model)
    np.testing.assert_array_equal(run(cleaned, inputs)["y"], np.maximum(inputs["x"], 0))


def test_remove_identities_keeps_training_dropout():
    model = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
training (float[N, 4] x) => (float[N, 4] y)
<float ratio = {0.5}, bool train = {1}>
{
    y = Dropout(x, ratio, train)
}
""")
    assert _ops(remove_identities(model)) == ["Dropout"]


def test_fold_constants(run, feeds):
    model = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
folding (float[N, 4] x) => (float[N, 4] y)
<float[4, 4] w = {1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 3, 0, 0, 0, 0, 4}>
{
    wt = Transpose(w)
    two = Constant<value = float {2.0}>()
    scaled = Mul(wt, two)
    y = MatMul(x, scaled)
}
""")
    folded = fold_constants(model)
    assert _ops(folded) == ["MatMul"]
    inputs = feeds(model)
    np.testing.assert_array_equal(run(folded, inputs)["y"], run(model, inputs)["y"])


def test_fold_constants_shape_of_static_dims(shape_chain):
    folded = fold_constants(shape_chain)
    # The batch dim is symbolic, so Shape(x)[0] stays; nothing else computed from constants is left.
    assert _ops(folded).count("Shape") == 1
    assert "Transpose" not in _ops(folded)


def test_expose_logit_through_squeeze(run, feeds):
    model = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
squeezed (float[N, 4] x) => (float[N] y)
<float[4, 1] w = {0.5, -0.5, 0.25, 1.0}, int64[1] axis = {1}>
{
    z = MatMul(x, w)
    p = Sigmoid(z)
    y = Squeeze(p, axis)
}
""")
    exposed, logit, activation = expose_logit(model, "y")
    assert (logit, activation) == ("y_logit", "sigmoid")
    outputs = run(exposed, feeds(model))
    assert outputs["y_logit"].shape == outputs["y"].shape
    np.testing.assert_allclose(_sigmoid_inverse(outputs["y"]), outputs["y_logit"], atol=1e-4)


def test_prune_to_logit(chain):
    pruned = prune(normalize(chain).model, ["z"])
    assert [value.name for value in pruned.graph.output] == ["z"]
    assert "Sigmoid" not in _ops(pruned)


def test_name_nodes_unique():
    model = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
names (float[N, 4] x) => (float[N, 4] y)
{
    a = Relu(x)
    y = Relu(a)
}
""")
    model.graph.node[1].name = "Relu_0"
    assert [node.name for node in name_nodes(model).graph.node] == ["Relu_0", "Relu_0_1"]


def test_prefix_names(chain):
    prefixed = prefix_names(chain, "src")
    assert [value.name for value in prefixed.graph.input] == ["src/x"]
    assert prefixed.graph.initializer[0].name == "src/w1"
