"""Dirty tables and mistaken options through compile, run and eval: one clear akfc error each; --fill and --guard-ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from akfc.cli import build_parser, main
from akfc.commands.compile import spec_from_args
from akfc.data import read_table
from akfc.errors import DataError, SpecError
from akfc.pipeline import compile
from akfc.runtime import make_session
from akfc.serving import read_metadata
from akfc.spec import CompileSpec, SourceSpec, TaskSpec, load_spec, parse_source_argument

_ROWS = {"train": 2000, "valid": 600, "test": 600}


@pytest.fixture(scope="module")
def small(adult_dir, tmp_path_factory):
    """The first rows of each prepared Adult split, and a tiny income and marital source."""
    from models.zoo.tiny import build_tiny_zoo

    folder = tmp_path_factory.mktemp("faults")
    for split, rows in _ROWS.items():
        pq.write_table(read_table(adult_dir / f"{split}.parquet").slice(0, rows), folder / f"{split}.parquet")
    income = build_tiny_zoo(adult_dir, folder, task="income", architectures=["mlp_deep"], exporters=["legacy"])["mlp_deep", "legacy"]
    marital = build_tiny_zoo(adult_dir, folder, task="marital", architectures=["mlp_deep"], exporters=["legacy"])["mlp_deep", "legacy"]
    return folder, income, marital


def _spec(small, output: Path, **options) -> CompileSpec:
    folder, income, marital = small
    settings = {"train": folder / "train.parquet", "valid": folder / "valid.parquet", "epochs": 0, **options}
    tasks = settings.pop("tasks", {})
    return CompileSpec(sources=[SourceSpec("income", income), SourceSpec("marital", marital)], tasks=tasks, output=output, **settings)


def _edited(small, split: str, name: str, column: str, edit) -> Path:
    """Write a copy of a split whose `column` is replaced by `edit(column)`."""
    table = read_table(small[0] / f"{split}.parquet")
    path = small[0] / f"{name}.parquet"
    pq.write_table(table.set_column(table.column_names.index(column), column, edit(table.column(column))), path)
    return path


def _dirty(small, split: str) -> Path:
    """A split with NaN and infinite ages (rows 1, 5, 7) and empty workclass ids (rows 2, 3)."""
    table = read_table(small[0] / f"{split}.parquet")
    ages = table.column("age").to_numpy().copy()
    ages[[1, 5]] = np.nan
    ages[7] = np.inf
    ids = pa.array([None if row in (2, 3) else value for row, value in enumerate(table.column("workclass").to_pylist())], pa.int64())
    table = table.set_column(table.column_names.index("age"), "age", pa.array(ages))
    path = small[0] / f"{split}_dirty.parquet"
    pq.write_table(table.set_column(table.column_names.index("workclass"), "workclass", ids), path)
    return path


# --- options: TASK=PATH#OUTPUT, --fill, --guard-ids and their spec keys


def test_source_output_suffix(tmp_path):
    source = parse_source_argument("income=models/a.onnx#probabilities")
    assert (source.task, source.path, source.output) == ("income", Path("models/a.onnx"), "probabilities")
    assert parse_source_argument("income=m#1.onnx#Identity_1:0").output == "Identity_1:0"
    named = tmp_path / "income#2.onnx"
    named.write_bytes(b"")
    assert (parse_source_argument(f"income={named}").path, parse_source_argument(f"income={named}").output) == (named, None)
    with pytest.raises(SpecError, match=r"source 'income=models/a.onnx#' is not of the form TASK=PATH#OUTPUT; give both"):
        parse_source_argument("income=models/a.onnx#")


def test_compile_flags_reach_spec():
    args = build_parser().parse_args(["compile", "income=a.onnx#probability", "--fill", "--guard-ids"])
    spec = spec_from_args(args)
    assert (spec.fill, spec.guard_ids) == (True, True)
    assert spec.sources[0].output == "probability"
    plain = spec_from_args(build_parser().parse_args(["compile", "income=a.onnx"]))
    assert (plain.fill, plain.guard_ids, plain.sources[0].output) == (False, False, None)


def test_spec_keys_fill_and_guard(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text('[data]\nfill = true\n[output]\nguard_ids = true\n[[source]]\ntask = "a"\npath = "a.onnx"\n')
    spec = load_spec(path)
    assert (spec.fill, spec.guard_ids, spec.output) == (True, True, Path("fused.onnx"))
    for text, message in (
        ("[training]\nfill = true\n", r"option 'fill' belongs in \[data\], not in \[fusion\] or \[training\]"),
        ("[data]\nfill = 1\n", r"\[data\]: fill must be bool, got 1"),
        ("[data]\nfil = true\n", r"\[data\] has unknown key fil; known keys are train, valid, test, fill"),
        ("[output]\nguard = true\n", r"\[output\] needs path"),
        ("[output]\npath = 'f.onnx'\nguard = true\n", r"\[output\] has unknown key guard; known keys are path, guard_ids"),
    ):
        path.write_text(text)
        with pytest.raises(SpecError, match=message):
            load_spec(path)


# --- faults the compile pipeline reports


def test_missing_label_column(small, tmp_path):
    spec = _spec(small, tmp_path / "fused.onnx", tasks={"income": TaskSpec("income", label="salary")})
    message = (
        r"train.parquet: label column 'salary' of binary task 'income' is missing \(columns: age, workclass, .*\); "
        r"add it, or name the task's label column with --label income=COLUMN \(label = \"COLUMN\" under \[task.income\] in a spec\)"
    )
    with pytest.raises(DataError, match=message):
        compile(spec.validate())


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_nan_label_rejected(small, tmp_path):
    valid = _edited(small, "valid", "valid_nan_label", "income", lambda c: pa.array(np.where(np.arange(len(c)) == 4, np.nan, c.to_numpy())))
    spec = _spec(small, tmp_path / "fused.onnx", valid=valid, fill=True)
    message = (
        r"valid_nan_label.parquet: label column 'income' of binary task 'income' has 1 empty, NaN or infinite values \(row 4\); "
        r"labels are never imputed, not even with --fill, so drop these rows"
    )
    with pytest.raises(DataError, match=message):
        compile(spec.validate())


def test_single_class_in_validation(small, tmp_path):
    valid = _edited(small, "valid", "valid_one_class", "marital", lambda c: pa.array(np.ones(len(c), dtype=np.int64)))
    message = (
        r"valid_one_class.parquet: label column 'marital' of binary task 'marital' holds only the value 1 \(600 rows\), so the "
        r"task's AUC is undefined on it; validation and test tables need rows of both classes 0 and 1"
    )
    with pytest.raises(DataError, match=message):
        compile(_spec(small, tmp_path / "fused.onnx", valid=valid).validate())


def test_multiclass_kind_on_single_output(small, tmp_path):
    spec = _spec(small, tmp_path / "fused.onnx", tasks={"income": TaskSpec("income", kind="multiclass")})
    message = (
        r"task 'income' is set to multiclass, but the head of source 'income_mlp_deep_legacy' \(.*income_mlp_deep_legacy.onnx\) "
        r"has 1 output \(sigmoid\), so the task can be binary or regression, not multiclass"
    )
    with pytest.raises(SpecError, match=message):
        compile(spec.validate())


def test_splits_with_different_columns(small, tmp_path):
    valid = small[0] / "valid_no_fnlwgt.parquet"
    pq.write_table(read_table(small[0] / "valid.parquet").drop(["fnlwgt"]), valid)
    message = r"valid_no_fnlwgt.parquet lacks columns that the sources or labels read and that .*train.parquet has: fnlwgt; give every split the same columns"
    with pytest.raises(DataError, match=message):
        compile(_spec(small, tmp_path / "fused.onnx", valid=valid).validate())


def test_nan_feature_names_fill(small, tmp_path):
    spec = _spec(small, tmp_path / "fused.onnx", train=_dirty(small, "train"))
    with pytest.raises(DataError, match=r"train_dirty.parquet: column 'age' has 3 NaN or infinite values \(rows 1, 5, 7\); clean or impute them, or compile with --fill"):
        compile(spec.validate())


# --- --fill and --guard-ids end to end


@pytest.mark.slow
def test_fill_and_guard_end_to_end(small, tmp_path, capsys):
    folder, income, marital = small
    output = tmp_path / "fused.onnx"
    train, valid, test = (_dirty(small, split) for split in ("train", "valid", "test"))
    status = main([
        "compile", f"income={income}#probability", f"marital={marital}", "--train", str(train), "--valid", str(valid),
        "--epochs", "1", "--lr", "1e-3", "--fill", "--guard-ids", "-o", str(output),
    ])  # fmt: skip
    assert status == 0

    # the report and the metadata record the fill values and counts, and the guarded inputs
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["fill"]["imputed"] == {"train": {"age": 3, "workclass": 2}, "valid": {"age": 3, "workclass": 2}}
    ages = read_table(folder / "train.parquet").column("age").to_numpy()
    mean = float(np.mean(np.delete(ages, [1, 5, 7]).astype(np.float64)))
    assert report["fill"]["values"]["age"] == pytest.approx(mean, rel=1e-6)
    assert report["fill"]["values"]["workclass"] == 0
    assert "income" not in report["fill"]["values"]
    fused = onnx.load(output)
    metadata = read_metadata(fused, str(output))
    assert metadata.fill == report["fill"]["values"]
    assert metadata.guard_ids["workclass"] == 9
    assert [node.name for node in fused.graph.node[:4]] == [f"akf/guard/workclass/{op}" for op in ("Less", "GreaterOrEqual", "Or", "Where")]

    # akfc run and eval impute the same values as compile did
    predictions = tmp_path / "predictions.parquet"
    assert main(["run", str(output), "--data", str(test), "--out", str(predictions)]) == 0
    session = make_session(fused, "cpu")
    clean = read_table(folder / "test.parquet")
    feeds = {i.name: clean.column(i.name).to_numpy().copy() for i in session.get_inputs()}
    feeds["age"][[1, 5, 7]] = metadata.fill["age"]
    feeds["workclass"][[2, 3]] = 0
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    written = read_table(predictions)
    for task in ("income", "marital"):
        np.testing.assert_allclose(written.column(task).to_numpy(), expected[task].reshape(-1), atol=1e-6)
    capsys.readouterr()
    assert main(["eval", str(output), "--data", str(test), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"]["income"]["fused"]["auc"] > 0.5

    # plain onnxruntime: ids outside the table give the output of id 0; akfc run still rejects them
    outside, as_zero = dict(feeds), dict(feeds)
    outside["workclass"] = feeds["workclass"].copy()
    outside["workclass"][:3] = [-1, 9, 10**9]
    as_zero["workclass"] = feeds["workclass"].copy()
    as_zero["workclass"][:3] = 0
    for a, b in zip(session.run(None, outside), session.run(None, as_zero)):
        np.testing.assert_array_equal(a, b)
    bad = tmp_path / "bad_ids.parquet"
    pq.write_table(clean.set_column(clean.column_names.index("workclass"), "workclass", pa.array(outside["workclass"])), bad)
    assert main(["run", str(output), "--data", str(bad), "--out", str(tmp_path / "p.parquet")]) == 2
    assert "column 'workclass' has ids outside 0..8, e.g. -1 at row 0 (rows 0, 1, 2)" in capsys.readouterr().err


@pytest.mark.slow
def test_plain_graph_rejects_nan_at_serving(small, tmp_path, capsys):
    output = tmp_path / "fused.onnx"
    result = compile(_spec(small, output).validate())
    fused = onnx.load(result.output)
    keys = {prop.key for prop in fused.metadata_props}
    assert not keys & {"akfc.fill", "akfc.guard_ids"}
    assert not any(node.name.startswith("akf/guard/") for node in fused.graph.node)
    assert "fill" not in result.report
    capsys.readouterr()
    assert main(["run", str(output), "--data", str(_dirty(small, "test")), "--out", str(tmp_path / "p.parquet")]) == 2
    assert "column 'age' has 3 NaN or infinite values (rows 1, 5, 7); clean or impute them, or compile with --fill" in capsys.readouterr().err
