"""`akfc.compile` end to end on tiny zoo sources: equality at start, parity, byte identity, determinism, safe writes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch

import akfc.pipeline as compile_module
from akfc.pipeline import compile, plan
from akfc.cli import main
from akfc.data import read_table
from akfc.errors import DataError, ModelError, SpecError
from akfc.passes.load import load_model
from akfc.passes.normalize import normalize
from akfc.passes.opset import unify_opsets
from akfc.runtime import make_session, run_batched
from akfc.serving import read_metadata
from akfc.spec import CompileSpec, SourceSpec
from akfc.train import TrainingSet, predict, task_loss

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sources(adult_dir, tmp_path_factory):
    """Two income sources (legacy exporter) and one marital source (dynamo exporter), briefly trained."""
    from models.zoo.tiny import build_tiny_zoo

    folder = tmp_path_factory.mktemp("sources")
    income = build_tiny_zoo(adult_dir, folder, task="income", architectures=["mlp_deep", "dcn"], exporters=["legacy"])
    marital = build_tiny_zoo(adult_dir, folder, task="marital", architectures=["deepfm"], exporters=["dynamo"])
    return [("income", income["mlp_deep", "legacy"]), ("income", income["dcn", "legacy"]), ("marital", marital["deepfm", "dynamo"])]


def _spec(sources, adult_dir, output, **options) -> CompileSpec:
    return CompileSpec(
        sources=[SourceSpec(task, path) for task, path in sources],
        tasks={},
        train=adult_dir / "train.parquet",
        valid=adult_dir / "valid.parquet",
        test=adult_dir / "test.parquet",
        output=output,
        **options,
    ).validate()


@pytest.fixture(scope="module")
def compiled(sources, adult_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("fused") / "fused.onnx"
    return compile(_spec(sources, adult_dir, output, epochs=2, seed=3, lr=1e-3))


def _reference(model, frontiers):
    """Each source's blocks and head without fusion, then the uniform mixture: what the sources compute."""
    outputs = {}
    for task, members in model.task_sources.items():
        per_source = []
        for m in members:
            frontier = frontiers[m]
            for block in model.blocks[m]:
                frontier = tuple(block(*frontier))
            logit = model.heads[m](*frontier)[0]
            per_source.append(torch.sigmoid(logit))
        outputs[task] = torch.stack(per_source).mean(dim=0)
    return outputs


def test_fused_model_starts_equal_to_sources(sources, adult_dir, tmp_path):
    fusion = plan(_spec(sources, adult_dir, tmp_path / "f.onnx"), tmp_path)
    valid = fusion.sets["valid"]
    fused = predict(fusion.model, valid)
    with torch.no_grad():
        lowered = _reference(fusion.model, valid.frontiers)
    for task in ("income", "marital"):
        assert np.max(np.abs(fused[task] - lowered[task].numpy())) <= 1e-6, task

    # the same against the sources themselves, run whole in onnxruntime
    table = read_table(adult_dir / "valid.parquet")
    models = unify_opsets([load_model(path) for _, path in sources])
    for task in ("income", "marital"):
        predictions = []
        for (source_task, path), model in zip(sources, models):
            if source_task != task:
                continue
            session = make_session(model, "cpu", optimize=False)
            feeds = {i.name: table.column(i.name).to_numpy() for i in session.get_inputs()}
            predictions.append(run_batched(session, feeds)[session.get_outputs()[0].name])
        ensemble = np.mean(predictions, axis=0)
        assert np.max(np.abs(fused[task] - ensemble)) <= 1e-5, task


def test_fusion_trains_every_level(sources, adult_dir, tmp_path):
    fusion = plan(_spec(sources, adult_dir, tmp_path / "f.onnx"), tmp_path)
    model, train_set = fusion.model, fusion.sets["train"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = [[tuple(t.clone() for t in f) for f in _level_inputs(model, train_set, k)] for k in range(len(model.levels))]
    grads = {}
    for step in range(3):
        frontiers, labels = train_set.rows(torch.arange(step * 256, (step + 1) * 256))
        out = model(frontiers)
        optimizer.zero_grad()
        task_loss(model, out.head_outputs, out.outputs, labels).backward()
        for name, parameter in model.levels.named_parameters():
            if parameter.grad is not None:
                grads[name] = grads.get(name, 0.0) + float(parameter.grad.abs().sum())
        optimizer.step()
    for k, level in enumerate(model.levels):
        for part in ("gates", "inter_task.attention", "adapters"):
            names = [n for n, _ in level.named_parameters() if n.startswith(part)]
            assert names, (k, part)
            assert all(grads.get(f"{k}.{n}", 0.0) > 0 for n in names), (k, part)
    after = [_level_inputs(model, train_set, k) for k in range(len(model.levels))]
    for k in range(1, len(model.levels)):
        changed = any(not torch.equal(a, b) for fa, fb in zip(before[k], after[k]) for a, b in zip(fa, fb))
        assert changed, f"level {k + 1} inputs did not change"


@torch.no_grad()
def _level_inputs(model, data: TrainingSet, k: int):
    """The frontiers that level k's blocks read, on the first 64 rows."""
    frontiers, _ = data.rows(slice(0, 64))
    for level_index in range(k):
        frontiers = [tuple(model.blocks[m][level_index](*f)) for m, f in enumerate(frontiers)]
        frontiers, _, _ = model.levels[level_index](frontiers)
    return frontiers


def test_compiled_graph_matches_torch(compiled, adult_dir):
    table = read_table(adult_dir / "valid.parquet")
    session = make_session(onnx.load(compiled.output), "cpu")
    feeds = {i.name: table.column(i.name).to_numpy() for i in session.get_inputs()}
    out = run_batched(session, feeds)
    for task in ("income", "marital"):
        assert compiled.parity[task] <= 1e-5, task
        assert np.max(np.abs(out[task] - compiled.valid_predictions[task])) <= 1e-5, task


def test_fused_graph_interface(compiled):
    fused = onnx.load(compiled.output)
    onnx.checker.check_model(fused, full_check=True)
    assert [o.name for o in fused.graph.output] == ["income", "marital"]
    for value in [*fused.graph.input, *fused.graph.output]:
        batch = value.type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.HasField("dim_value"), value.name
    assert "education-num" in {i.name for i in fused.graph.input}
    metadata = read_metadata(fused, str(compiled.output))
    assert metadata.levels == 3
    assert {s.task for s in metadata.sources} == {"income", "marital"}
    assert set(metadata.metrics) == {"valid", "test"}
    namespaces = {node.name.split("/")[0] for node in fused.graph.node}
    assert namespaces >= {"income_mlp_deep_legacy", "income_dcn_legacy", "marital_deepfm_dynamo", "akf"}
    assert any(node.name.startswith("akf/level3/") for node in fused.graph.node)
    assert any(node.name.startswith("income_dcn_legacy/level2/") for node in fused.graph.node)


def test_frozen_initializers_byte_identical(compiled, sources):
    fused = {init.name: init.raw_data or init.SerializeToString() for init in onnx.load(compiled.output).graph.initializer}
    models = unify_opsets([load_model(path) for _, path in sources])
    checked = 0
    for model, source in zip(models, compiled.metadata.sources):
        normalized = normalize(model, source.name)
        for init in normalized.model.graph.initializer:
            if init.name in fused:
                expected = init.raw_data or init.SerializeToString()
                assert hashlib.sha256(fused[init.name]).digest() == hashlib.sha256(expected).digest(), init.name
                checked += 1
    weights = [i for m in models for i in m.graph.initializer if len(i.dims) >= 2]
    assert checked >= len(weights)


def test_fused_beats_ensemble_on_tiny_sources(compiled):
    for task, entry in compiled.report["tasks"].items():
        assert entry["fused"]["auc"] > entry["sources"][next(iter(entry["sources"]))]["auc"] - 0.005, task
    income = compiled.report["tasks"]["income"]
    assert income["fused"]["auc"] > income["ensemble"]["auc"]


def test_report_files_written(compiled):
    folder = compiled.output.parent
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "fused.checkpoints", "fused.onnx", "report.json", "report.md", "report.png",
    ]
    assert "| income | fused |" in (folder / "report.md").read_text()


def test_compile_is_deterministic(compiled, sources, adult_dir, tmp_path):
    again = compile(_spec(sources, adult_dir, tmp_path / "fused.onnx", epochs=2, seed=3, lr=1e-3))
    first = {i.name: i.SerializeToString() for i in onnx.load(compiled.output).graph.initializer}
    second = {i.name: i.SerializeToString() for i in onnx.load(again.output).graph.initializer}
    assert first.keys() == second.keys()
    different = sorted(name for name in first if first[name] != second[name])
    assert different == []


def test_existing_output_needs_force(sources, adult_dir, tmp_path):
    output = tmp_path / "fused.onnx"
    output.write_bytes(b"keep me")
    with pytest.raises(SpecError, match=r"fused.onnx exists; pass --force to overwrite it"):
        compile(_spec(sources, adult_dir, output))
    assert output.read_bytes() == b"keep me"


def test_output_equal_to_input_rejected(sources, adult_dir):
    with pytest.raises(SpecError, match=r"is also an input; choose another output path with -o"):
        compile(_spec(sources, adult_dir, Path(sources[0][1]), force=True))


def test_failed_parity_writes_nothing(sources, adult_dir, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise ModelError("the fused graph's task 'income' differs from the trained torch model by 0.5")

    monkeypatch.setattr(compile_module, "_verify_parity", fail)
    with pytest.raises(ModelError, match=r"differs from the trained torch model by 0.5"):
        compile(_spec(sources, adult_dir, tmp_path / "fused.onnx", epochs=0))
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "fused.checkpoints")
    assert leftovers == []


def test_trained_heads_and_stems_written_back(sources, adult_dir, tmp_path):
    result = compile(_spec(sources, adult_dir, tmp_path / "fused.onnx", epochs=1, lr=1e-3, train_components=["heads", "stems"]))
    assert all(diff <= 1e-5 for diff in result.parity.values()), result.parity
    fused = {i.name: i for i in onnx.load(result.output).graph.initializer}
    trained = [name for name in fused if name.endswith("/trained")]
    assert any("income_dcn_legacy/" in name for name in trained)
    original = {i.name: i for i in normalize(unify_opsets([load_model(sources[1][1])])[0], "income_dcn_legacy").model.graph.initializer}
    changed = [name for name in trained if name.startswith("income_dcn_legacy/")
               and onnx.numpy_helper.to_array(fused[name]).tobytes() != onnx.numpy_helper.to_array(original[name[: -len("/trained")]]).tobytes()]
    assert changed, "no trained stem or head weight differs from the source"


def test_inspect_fused_graph(compiled, capsys):
    assert main(["inspect", str(compiled.output)]) == 0
    out = capsys.readouterr().out
    assert "akf" in out
    assert "mixture" in out
    assert "task income (binary, output 'income', label 'income'): sources income_mlp_deep_legacy, income_dcn_legacy" in out
    assert main(["inspect", str(compiled.output), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["model"]["fused"] is True
    assert document["model"]["levels"] == 3
    names = {(c["owner"], c["name"]) for c in document["components"]}
    assert {("akf", "level1"), ("akf", "mixture"), ("income_dcn_legacy", "stem"), ("marital_deepfm_dynamo", "head")} <= names


def test_eval_and_run_commands(compiled, sources, adult_dir, tmp_path, capsys):
    test_file = str(adult_dir / "test.parquet")
    assert main(["eval", str(compiled.output), "--data", test_file, "--sources", *(str(p) for _, p in sources), "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tasks"]["income"]["fused"]["auc"] == pytest.approx(compiled.report["tasks"]["income"]["fused"]["auc"], abs=1e-9)
    assert set(report["tasks"]["income"]["sources"]) == {"income_mlp_deep_legacy", "income_dcn_legacy"}
    assert "ensemble" in report["tasks"]["income"]
    out = tmp_path / "predictions.parquet"
    assert main(["run", str(compiled.output), "--data", test_file, "--out", str(out)]) == 0
    predictions = read_table(out)
    assert predictions.column_names == ["income", "marital"]
    assert predictions.num_rows == 16_281


def _with_bad_id(adult_dir, tmp_path, split: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = read_table(adult_dir / f"{split}.parquet")
    ids = table.column("workclass").to_numpy().copy()
    ids[3] = 99
    bad = tmp_path / f"{split}_bad.parquet"
    pq.write_table(table.set_column(table.column_names.index("workclass"), "workclass", pa.array(ids)), bad)
    return bad


def test_out_of_range_id_rejected_by_compile(sources, adult_dir, tmp_path):
    spec = _spec(sources, adult_dir, tmp_path / "out" / "fused.onnx", epochs=0)
    spec.valid = _with_bad_id(adult_dir, tmp_path, "valid")
    with pytest.raises(DataError, match=r"column 'workclass' has ids outside 0..8, e.g. 99 at row 3 \(row 3\); graph input 'workclass'"):
        compile(spec)
    assert not (tmp_path / "out" / "fused.onnx").exists()


def test_out_of_range_id_rejected_by_run(compiled, adult_dir, tmp_path, capsys):
    bad = _with_bad_id(adult_dir, tmp_path, "test")
    assert main(["run", str(compiled.output), "--data", str(bad), "--out", str(tmp_path / "p.parquet")]) == 2
    assert "column 'workclass' has ids outside 0..8, e.g. 99 at row 3" in capsys.readouterr().err
    assert not (tmp_path / "p.parquet").exists()
