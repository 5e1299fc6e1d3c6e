"""Fusing torch-rechub ranking models (DeepFM, DCN, WideDeep) exported with torch-rechub's own ONNX exporter."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from akfc.spec import SourceSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rechub(adult_dir, tmp_path_factory):
    from models.external.rechub_sources import RECHUB_MODELS, build_rechub_source

    folder = tmp_path_factory.mktemp("rechub")
    built = [build_rechub_source(adult_dir, folder / f"marital_rechub_{kind}.onnx", kind) for kind in RECHUB_MODELS]
    return [SourceSpec("marital", source.path) for source in built]


def test_rechub_export_signature(rechub):
    model = onnx.load(rechub[0].path)
    shapes = {v.name: (v.type.tensor_type.elem_type, len(v.type.tensor_type.shape.dim)) for v in model.graph.input}
    # ids int64 [batch] and dense values float [batch, 1], each named as its column
    assert shapes["workclass"] == (onnx.TensorProto.INT64, 1)
    assert shapes["age"] == (onnx.TensorProto.FLOAT, 2)
    assert [(o.name, len(o.type.tensor_type.shape.dim)) for o in model.graph.output] == [("output", 1)]


def test_rechub_parity(rechub, fuse, tmp_path):
    result = fuse(rechub, tmp_path / "fused.onnx", epochs=1, lr=1e-3)
    assert result.parity["marital"] <= 1e-5
    assert sorted(result.report["tasks"]["marital"]["sources"]) == ["marital_rechub_dcn", "marital_rechub_deepfm", "marital_rechub_widedeep"]


def test_rechub_untrained_equals_sources(rechub, fuse, fused_outputs, sources_mean, tmp_path):
    result = fuse(rechub, tmp_path / "fused.onnx", epochs=0)
    assert result.parity["marital"] <= 1e-5
    fused = fused_outputs(result.output)["marital"]
    assert np.max(np.abs(fused - sources_mean(rechub)["marital"])) <= 1e-5
