"""Mixed fusion on Adult: a zoo DCN, a skl2onnx pipeline and a LightGBM model for income; a torch-rechub DeepFM and a packed-input MLP for marital."""

from __future__ import annotations

import onnx
import pytest

from akfc.pipeline import _prepare_sources
from akfc.spec import CompileSpec, SourceSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def others(adult_dir, tmp_path_factory):
    """The zoo DCN for income; the torch-rechub DeepFM and the packed-input MLP for marital."""
    from models.external.packed import build_packed_mlp
    from models.external.rechub_sources import build_rechub_source
    from models.zoo.tiny import build_tiny_zoo

    folder = tmp_path_factory.mktemp("mixed")
    dcn = build_tiny_zoo(adult_dir, folder, task="income", architectures=["dcn"], exporters=["legacy"])["dcn", "legacy"]
    deepfm = build_rechub_source(adult_dir, folder / "marital_rechub_deepfm.onnx", "deepfm")
    packed = build_packed_mlp(adult_dir, folder / "marital_packed.onnx", task="marital")
    return dcn, deepfm, packed


def test_mixed_fusion(others, sklearn_trees, adult_dir, tmp_path, fuse, frozen_bytes_match):
    dcn, deepfm, packed = others
    sklearn, trees = sklearn_trees["sklearn_income"], sklearn_trees["lightgbm_income"]
    sources = [
        SourceSpec("income", dcn),
        SourceSpec("income", sklearn.path, inputs=sklearn.inputs),
        SourceSpec("income", trees.path, inputs=trees.inputs),
        SourceSpec("marital", deepfm.path),
        SourceSpec("marital", packed.path, inputs=packed.inputs),
    ]
    # compile raises unless the untrained fused graph equals the sources' uniform mixture.
    result = fuse(sources, tmp_path / "fused.onnx", epochs=2, lr=1e-3, seed=0)
    assert max(result.parity.values()) <= 1e-5
    spec = CompileSpec(sources=sources, tasks={}, output=tmp_path / "x.onnx").validate()
    assert frozen_bytes_match(result.output, _prepare_sources(spec)) >= 30

    fused = onnx.load(result.output)
    inputs = {value.name: value.type.tensor_type.elem_type for value in fused.graph.input}
    assert inputs["workclass"] == onnx.TensorProto.INT64
    assert inputs["workclass_raw"] == onnx.TensorProto.STRING
    income = result.report["tasks"]["income"]
    assert set(income["sources"]) == {"income_dcn_legacy", "income_sklearn", "income_lightgbm"}
    assert set(result.report["tasks"]["marital"]["sources"]) == {"marital_rechub_deepfm", "marital_packed"}
    lines = [f"{task} {name} test AUC {entry['auc']:.4f}" for task, block in result.report["tasks"].items()
             for name, entry in [*block["sources"].items(), ("fused", block["fused"])]]  # fmt: skip
    print("\n".join(lines))
    for task, block in result.report["tasks"].items():
        best = max(entry["auc"] for entry in block["sources"].values())
        assert block["fused"]["auc"] > best - 0.01, task
