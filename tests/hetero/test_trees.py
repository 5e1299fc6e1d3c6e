"""A LightGBM classifier converted with onnxmltools: a head-only source whose probabilities join the task's mixture."""

from __future__ import annotations

import onnx
import pytest
import torch

from akfc.errors import ModelError
from akfc.fusion import TaskMixture
from akfc.pipeline import _prepare_sources, plan
from akfc.spec import CompileSpec, SourceSpec


def _spec(adult_dir, sources, output, **options) -> CompileSpec:
    return CompileSpec(
        sources=sources, tasks={}, train=adult_dir / "train.parquet", valid=adult_dir / "valid.parquet",
        test=adult_dir / "test.parquet", output=output, **options,
    ).validate()  # fmt: skip


def _sources(built) -> list[SourceSpec]:
    return [
        SourceSpec("income", built["sklearn_income_tensor"].path, inputs=built["sklearn_income_tensor"].inputs),
        SourceSpec("income", built["lightgbm_income"].path, inputs=built["lightgbm_income"].inputs),
        SourceSpec("marital", built["sklearn_marital"].path, inputs=built["sklearn_marital"].inputs),
    ]


def test_mixture_two_column_probability():
    mixture = TaskMixture("binary", ["probability", "probability"])
    out = mixture([torch.tensor([[0.3, 0.7]]), torch.tensor([[0.1]])])
    assert out.shape == (1, 1)
    assert out.item() == pytest.approx(0.4, abs=1e-6)


def test_lightgbm_is_head_only(sklearn_trees, adult_dir, tmp_path):
    # plan checks that the untrained fused model equals the sources' uniform mixture.
    fusion = plan(_spec(adult_dir, _sources(sklearn_trees), tmp_path / "f.onnx"), tmp_path)
    trees = fusion.sources[1]
    assert (trees.head_only, trees.kind, trees.output_mode) == (True, "binary", "probability")
    assert [node.op_type for node in trees.components[0].graph.node] == ["TreeEnsembleClassifier", "Mul"]
    model = fusion.model
    assert model.fused_sources == [0, 2]
    assert [len(level.projections) for level in model.levels] == [2, 2, 2]
    assert model.mixtures["income"].source_outputs == ["logit", "probability"]
    assert tuple(fusion.sets["valid"].frontiers[1][0].shape[1:]) == (2,)
    assert "levels.0.adapters.1.0.weight" in model.task_parameter_names("marital")


def test_only_head_only_sources_rejected(sklearn_trees, adult_dir, tmp_path):
    built = sklearn_trees["lightgbm_income"]
    spec = _spec(adult_dir, [SourceSpec("income", built.path, inputs=built.inputs)], tmp_path / "f.onnx")
    with pytest.raises(ModelError, match="every source is head-only"):
        plan(spec, tmp_path)


@pytest.mark.slow
def test_lightgbm_compile(sklearn_trees, adult_dir, tmp_path, fuse, frozen_bytes_match):
    sources = _sources(sklearn_trees)
    result = fuse(sources, tmp_path / "fused.onnx", epochs=1, lr=1e-3)
    assert max(result.parity.values()) <= 1e-5
    fused = onnx.load(result.output)
    trees = [node for node in fused.graph.node if node.op_type == "TreeEnsembleClassifier"]
    assert [node.name for node in trees] == ["income_lightgbm/stem/LgbmClassifier"]
    assert frozen_bytes_match(result.output, _prepare_sources(_spec(adult_dir, sources, tmp_path / "x.onnx"))) >= 10
    gates = result.report["fusion"]["levels"][0]["gates"]
    assert list(gates["income"]) == ["income_sklearn_tensor"]
    income = result.report["tasks"]["income"]
    assert set(income["sources"]) == {"income_sklearn_tensor", "income_lightgbm"}
    assert income["sources"]["income_lightgbm"]["auc"] > 0.9
