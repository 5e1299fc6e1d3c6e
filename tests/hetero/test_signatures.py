"""Fusing sources with other input signatures: packed inputs, int32 ids, [batch, 1] columns, a feature subset, tf2onnx names."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from akfc.spec import SourceSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def packed(adult_dir, tmp_path_factory):
    """Two DeepCTR-style sources: every feature packed in schema order, and five features in another order."""
    from models.external.packed import build_packed_mlp

    folder = tmp_path_factory.mktemp("packed")
    every = build_packed_mlp(adult_dir, folder / "packed_all.onnx", task="marital")
    subset = build_packed_mlp(adult_dir, folder / "packed_five.onnx", task="marital", columns=["hours-per-week", "age", "sex", "education-num", "relationship"], seed=1)
    return [SourceSpec("marital", s.path, inputs=s.inputs) for s in (every, subset)]


@pytest.fixture(scope="module")
def signatures(adult_dir, tmp_path_factory):
    """int32 ids with [batch, 1] numeric inputs; a four-column subset; tf2onnx-style names."""
    from models.external.signatures import build_column_mlp, rename_tf2onnx_style

    folder = tmp_path_factory.mktemp("signatures")
    narrow = build_column_mlp(adult_dir, folder / "int32_column.onnx", ids="int32", numeric_rank=2)
    subset = build_column_mlp(adult_dir, folder / "subset.onnx", columns=["age", "education", "hours-per-week", "sex"], seed=1)
    renamed = rename_tf2onnx_style(build_column_mlp(adult_dir, folder / "plain.onnx", seed=2), folder / "tf2onnx_names.onnx")
    return [SourceSpec("income", s.path, inputs=s.inputs, output=s.output) for s in (narrow, subset, renamed)]


def test_packed_parity(packed, fuse, tmp_path):
    result = fuse(packed, tmp_path / "fused.onnx", epochs=1, lr=1e-3)
    assert result.parity["marital"] <= 1e-5
    fused = onnx.load(result.output)
    # the packed tensors are assembled inside the graph from one input per data column
    assert sorted(value.name for value in fused.graph.input) == sorted(packed[0].inputs["X"])
    concats = [node.name for node in fused.graph.node if node.op_type == "Concat" and "/bind/" in node.name]
    assert concats == ["packed_all/bind/X/Concat", "packed_five/bind/X/Concat"]


def test_packed_untrained_equals_sources(packed, fuse, fused_outputs, sources_mean, tmp_path):
    result = fuse(packed, tmp_path / "fused.onnx", epochs=0)
    assert result.parity["marital"] <= 1e-5
    fused = fused_outputs(result.output)["marital"]
    assert np.max(np.abs(fused - sources_mean(packed)["marital"])) <= 1e-5


def test_packed_before_id_reader(packed, signatures, fuse, tmp_path):
    """A packed float source listed before a source reading the same id column whole: the column keeps its int type."""
    result = fuse([packed[0], signatures[1]], tmp_path / "fused.onnx", epochs=0)
    assert max(result.parity.values()) <= 1e-5
    inputs = {value.name: value.type.tensor_type.elem_type for value in onnx.load(result.output).graph.input}
    assert inputs["education"] == onnx.TensorProto.INT64
    assert inputs["age"] == onnx.TensorProto.FLOAT


def test_signatures_parity(signatures, fuse, adult_dir, tmp_path):
    from models.adult.prepare import load_schema

    result = fuse(signatures, tmp_path / "fused.onnx", epochs=1, lr=1e-3)
    assert result.parity["income"] <= 1e-5
    fused = onnx.load(result.output)
    inputs = {value.name: value.type.tensor_type for value in fused.graph.input}
    # inputs are named after the data columns, never after the tf2onnx graph names
    assert sorted(inputs) == sorted(load_schema(adult_dir)["features"])
    assert inputs["workclass"].elem_type == onnx.TensorProto.INT32
    assert len(inputs["age"].shape.dim) == 1
    assert [value.name for value in fused.graph.output] == ["income"]


def test_signatures_untrained_equals_sources(signatures, fuse, fused_outputs, sources_mean, tmp_path):
    result = fuse(signatures, tmp_path / "fused.onnx", epochs=0)
    assert result.parity["income"] <= 1e-5
    fused = fused_outputs(result.output)["income"]
    assert np.max(np.abs(fused - sources_mean(signatures)["income"])) <= 1e-5
