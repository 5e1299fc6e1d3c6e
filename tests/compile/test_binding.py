"""Binding data columns to sources whose inputs differ: renamed, int32 ids, [batch, 1] columns, packed inputs."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from akfc.data import read_table
from akfc.errors import DataError
from akfc.pipeline import compile
from akfc.runtime import make_session, run_batched
from akfc.spec import CompileSpec, SourceSpec

pytestmark = pytest.mark.slow


class _Column(nn.Module):
    """income from `age` as [batch, 1] float and `job` as int32 ids (the `workclass` column under another name)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(9, 4)
        self.layers = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU())
        self.output = nn.Linear(8, 1)

    def forward(self, age, job):
        x = torch.cat([age, self.embedding(job.long())], dim=1)
        return torch.sigmoid(self.output(self.layers(x)))


class _Packed(nn.Module):
    """income from a packed [batch, 3] float input and `workclass` as int64 ids."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(9, 4)
        self.layers = nn.Sequential(nn.Linear(7, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU())
        self.output = nn.Linear(8, 1)

    def forward(self, features, workclass):
        x = torch.cat([features, self.embedding(workclass)], dim=1)
        return torch.sigmoid(self.output(self.layers(x)))


def _export(model: nn.Module, example: tuple, names: list[str], path):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), example, str(path), dynamo=False, opset_version=17, input_names=names,
            output_names=["probability"], dynamic_axes={name: {0: "batch"} for name in [*names, "probability"]},
        )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("binding")
    torch.manual_seed(1)
    column = _export(_Column(), (torch.zeros(4, 1), torch.ones(4, dtype=torch.int32)), ["age", "job"], folder / "column.onnx")
    packed = _export(_Packed(), (torch.zeros(4, 3), torch.ones(4, dtype=torch.int64)), ["features", "workclass"], folder / "packed.onnx")
    return column, packed


def _spec(sources, adult_dir, output, **options) -> CompileSpec:
    column, packed = sources
    return CompileSpec(
        sources=[
            SourceSpec("income", column, inputs={"job": "workclass"}),
            SourceSpec("income", packed, inputs={"features": ["age", "fnlwgt", "hours-per-week"]}),
        ],
        tasks={},
        train=adult_dir / "train.parquet",
        valid=adult_dir / "valid.parquet",
        output=output,
        **options,
    ).validate()


def test_mixed_signatures_fuse_with_parity(sources, adult_dir, tmp_path):
    result = compile(_spec(sources, adult_dir, tmp_path / "fused.onnx", epochs=1, lr=1e-3))
    assert result.parity["income"] <= 1e-5
    fused = onnx.load(result.output)
    inputs = {value.name: value.type.tensor_type for value in fused.graph.input}
    assert sorted(inputs) == ["age", "fnlwgt", "hours-per-week", "workclass"]
    # the narrower id type feeds both sources: int32 is widened losslessly for the int64 one
    assert inputs["workclass"].elem_type == onnx.TensorProto.INT32
    casts = [node for node in fused.graph.node if node.op_type == "Cast"]
    assert any(node.input[0] == "workclass" for node in casts)
    assert any(node.op_type == "Concat" and node.name.startswith("packed/bind/features") for node in fused.graph.node)


def test_untrained_fusion_equals_sources(sources, adult_dir, tmp_path):
    result = compile(_spec(sources, adult_dir, tmp_path / "fused.onnx", epochs=0))
    table = read_table(adult_dir / "valid.parquet")
    age = table.column("age").to_numpy().astype(np.float32)
    workclass = table.column("workclass").to_numpy()
    packed = np.stack([table.column(c).to_numpy() for c in ("age", "fnlwgt", "hours-per-week")], axis=1).astype(np.float32)
    column_out = run_batched(make_session(str(sources[0]), "cpu"), {"age": age.reshape(-1, 1), "job": workclass.astype(np.int32)})["probability"]
    packed_out = run_batched(make_session(str(sources[1]), "cpu"), {"features": packed, "workclass": workclass})["probability"]
    fused = run_batched(make_session(onnx.load(result.output), "cpu"), {
        "age": age, "fnlwgt": table.column("fnlwgt").to_numpy(), "hours-per-week": table.column("hours-per-week").to_numpy(),
        "workclass": workclass.astype(np.int32),
    })["income"]  # fmt: skip
    assert np.max(np.abs(fused - (column_out + packed_out) / 2)) <= 1e-5


def test_lossy_binding_rejected(sources, adult_dir, tmp_path):
    spec = _spec(sources, adult_dir, tmp_path / "fused.onnx", epochs=0)
    # `age` is float32 in the data; binding the int32 `job` input to it cannot be lossless
    spec.sources[0].inputs = {"job": "age"}
    with pytest.raises(DataError, match=r"column 'age' has non-integer value .* at row 0 but the graph input needs int32"):
        compile(spec)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
