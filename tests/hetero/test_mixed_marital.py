"""Mixed fusion on Adult, marital half: a torch-rechub DeepFM and a packed-input MLP for marital, a zoo DCN for income."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import onnx
import pytest

from akfc.passes.load import load_model
from akfc.passes.normalize import normalize
from akfc.passes.opset import unify_opsets
from akfc.spec import SourceSpec

pytestmark = pytest.mark.slow

logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def mixed(adult_dir, tmp_path_factory):
    from models.external.packed import build_packed_mlp
    from models.external.rechub_sources import build_rechub_source
    from models.zoo.tiny import build_tiny_zoo

    folder = tmp_path_factory.mktemp("mixed")
    income = build_tiny_zoo(adult_dir, folder, task="income", architectures=["dcn"], exporters=["legacy"])["dcn", "legacy"]
    deepfm = build_rechub_source(adult_dir, folder / "marital_rechub_deepfm.onnx", "deepfm")
    packed = build_packed_mlp(adult_dir, folder / "marital_packed.onnx", task="marital")
    return [SourceSpec("income", income), SourceSpec("marital", deepfm.path), SourceSpec("marital", packed.path, inputs=packed.inputs)]


@pytest.fixture(scope="module")
def compiled(mixed, adult_dir, tmp_path_factory):
    from akfc.pipeline import compile
    from akfc.spec import CompileSpec

    spec = CompileSpec(
        sources=mixed, tasks={}, train=adult_dir / "train.parquet", valid=adult_dir / "valid.parquet", test=adult_dir / "test.parquet",
        output=tmp_path_factory.mktemp("fused") / "fused.onnx", epochs=2, lr=1e-3, seed=0,
    )  # fmt: skip
    return compile(spec.validate())


def test_mixed_parity_and_aucs(compiled):
    for task in ("income", "marital"):
        assert compiled.parity[task] <= 1e-5, task
    assert compiled.report["split"] == "test"
    for task, entry in compiled.report["tasks"].items():
        sources = ", ".join(f"{name} {metrics['auc']:.4f}" for name, metrics in entry["sources"].items())
        logger.warning("test AUC, %s: fused %.4f; sources %s", task, entry["fused"]["auc"], sources)
    marital = compiled.report["tasks"]["marital"]
    assert sorted(marital["sources"]) == ["marital_packed", "marital_rechub_deepfm"]
    assert marital["fused"]["auc"] > max(m["auc"] for m in marital["sources"].values()) - 0.005


def test_mixed_untrained_equals_sources(mixed, fuse, fused_outputs, sources_mean, tmp_path):
    result = fuse(mixed, tmp_path / "fused.onnx", epochs=0)
    fused = fused_outputs(result.output)
    for task, expected in sources_mean(mixed).items():
        assert np.max(np.abs(fused[task] - expected)) <= 1e-5, task


def test_mixed_frozen_initializers_byte_identical(compiled, mixed):
    fused = {init.name: init.raw_data or init.SerializeToString() for init in onnx.load(compiled.output).graph.initializer}
    models = unify_opsets([load_model(source.path) for source in mixed])
    checked = 0
    for model, source in zip(models, compiled.metadata.sources):
        for init in normalize(model, source.name).model.graph.initializer:
            if init.name in fused:
                expected = init.raw_data or init.SerializeToString()
                assert hashlib.sha256(fused[init.name]).digest() == hashlib.sha256(expected).digest(), init.name
                checked += 1
    weights = [i for m in models for i in m.graph.initializer if len(i.dims) >= 2]
    assert checked >= len(weights)
