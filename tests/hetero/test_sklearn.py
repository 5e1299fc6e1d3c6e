"""A scikit-learn Pipeline converted with skl2onnx: string inputs, a ZipMap output, preprocessing in the stem, the MLP lowered."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from akfc.errors import DataError
from akfc.pipeline import _prepare_sources, plan
from akfc.spec import CompileSpec, SourceSpec


def _spec(adult_dir, sources, output, **options) -> CompileSpec:
    return CompileSpec(
        sources=sources, tasks={}, train=adult_dir / "train.parquet", valid=adult_dir / "valid.parquet",
        test=adult_dir / "test.parquet", output=output, **options,
    ).validate()  # fmt: skip


def _source(task, built) -> SourceSpec:
    return SourceSpec(task, built.path, inputs=built.inputs)


def test_sklearn_signature(sklearn_trees):
    model = onnx.load(sklearn_trees["sklearn_income"].path)
    types = {value.name: value.type.tensor_type for value in model.graph.input}
    assert len(types) == 13
    assert types["workclass"].elem_type == onnx.TensorProto.STRING
    assert types["native_country"].elem_type == onnx.TensorProto.STRING
    assert types["age"].elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in types["workclass"].shape.dim] == [0, 1]
    assert [value.name for value in model.graph.output] == ["output_label", "output_probability"]
    assert model.graph.output[1].type.HasField("sequence_type")
    assert sklearn_trees["sklearn_income"].inputs["native_country"] == "native-country_raw"
    assert sklearn_trees["sklearn_income"].inputs["capital_gain"] == "capital-gain"
    tensor = onnx.load(sklearn_trees["sklearn_income_tensor"].path)
    assert [value.name for value in tensor.graph.output] == ["label", "probabilities"]


def test_sklearn_components(sklearn_trees, adult_dir, tmp_path):
    spec = _spec(adult_dir, [_source("income", sklearn_trees[name]) for name in ("sklearn_income", "sklearn_income_tensor")], tmp_path / "f.onnx")
    for source in _prepare_sources(spec):
        stem_ops = {node.op_type for node in source.components[0].graph.node}
        assert {"OneHotEncoder", "Scaler"} <= stem_ops, source.spec.name
        assert (source.kind, source.output_mode, source.head_only) == ("binary", "logit", False)
        # The head ends at the Sigmoid's input, not at the [P(0), P(1)] Concat.
        head = source.components[-1]
        assert [node.op_type for node in head.graph.node] == ["MatMul", "Add"]
        assert [d.dim_value for d in head.graph.output[0].type.tensor_type.shape.dim[1:]] == [1]
        lowered = [c for c in source.decomposition.blocks if not c.identity]
        assert [sorted(c.ops) for c in lowered] == [["Add", "MatMul", "Relu"]] * 2
    zipmap, tensor = _prepare_sources(spec)
    assert (zipmap.graph_output, tensor.graph_output) == ("output_probability", "probabilities")


def test_sklearn_string_input_needs_binding(sklearn_trees, adult_dir, tmp_path):
    # Every input is bound except workclass, which then reads the id column of the same name.
    numeric = {name: column for name, column in sklearn_trees["sklearn_income"].inputs.items() if name != "workclass"}
    spec = _spec(adult_dir, [SourceSpec("income", sklearn_trees["sklearn_income"].path, inputs=numeric)], tmp_path / "f.onnx")
    with pytest.raises(DataError, match=r"reads text but column 'workclass' contains int64 values; bind the input to a text column"):
        plan(spec, tmp_path)


@pytest.mark.slow
def test_sklearn_compile(sklearn_trees, adult_dir, tmp_path, fuse, frozen_bytes_match):
    sources = [
        _source("income", sklearn_trees["sklearn_income"]),
        _source("income", sklearn_trees["sklearn_income_tensor"]),
        _source("marital", sklearn_trees["sklearn_marital"]),
    ]
    result = fuse(sources, tmp_path / "fused.onnx", epochs=1, lr=1e-3)
    assert max(result.parity.values()) <= 1e-5
    fused = onnx.load(result.output)
    inputs = {value.name: value.type.tensor_type.elem_type for value in fused.graph.input}
    assert inputs["workclass_raw"] == onnx.TensorProto.STRING
    assert inputs["capital-gain"] == onnx.TensorProto.FLOAT
    assert "workclass" not in inputs
    assert {node.op_type for node in fused.graph.node} >= {"OneHotEncoder", "Scaler"}
    assert frozen_bytes_match(result.output, _prepare_sources(_spec(adult_dir, sources, tmp_path / "x.onnx"))) >= 18
    assert [s.output for s in result.metadata.sources] == ["output_probability", "probabilities", "probabilities"]
    income = result.report["tasks"]["income"]
    assert set(income["sources"]) == {"income_sklearn", "income_sklearn_tensor"}
    assert 0.85 < income["fused"]["auc"] < 1
    assert np.isfinite(result.training.best_score)


def test_eval_with_zipmap_source(sklearn_trees, adult_dir, tmp_path, fuse, capsys):
    """`akfc eval` runs a source whose task output is skl2onnx's ZipMap (a sequence of maps)."""
    import json

    from akfc.cli import main

    zipmap, tensor = sklearn_trees["sklearn_income"], sklearn_trees["sklearn_income_tensor"]
    sources = [SourceSpec("income", zipmap.path, inputs=zipmap.inputs), SourceSpec("income", tensor.path, inputs=tensor.inputs)]
    result = fuse(sources, tmp_path / "fused.onnx", epochs=0)
    test_file = str(adult_dir / "test.parquet")
    assert main(["eval", str(result.output), "--data", test_file, "--sources", str(zipmap.path), str(tensor.path), "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    income = report["tasks"]["income"]
    assert set(income["sources"]) == {"income_sklearn", "income_sklearn_tensor"}
    assert income["ensemble"]["auc"] == pytest.approx(income["fused"]["auc"], abs=1e-6)
