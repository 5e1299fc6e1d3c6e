"""The op table and `akfc ops`: every required op at every opset from 13 to the installed onnx's newest."""

from __future__ import annotations

import json

import onnx
import pytest

from akfc.cli import main
from akfc.lower import supported_ops, supported_opsets
from akfc.lower.registry import lookup, schema_versions

# The ops that blocks and heads of the zoo, both torch exporters, skl2onnx MLP
# and linear models and typical recommender models emit.
REQUIRED_OPS = (
    "Gemm MatMul Add Sub Mul Div Neg Abs Exp Log Sqrt Pow Reciprocal Relu LeakyRelu PRelu Elu Selu Sigmoid "
    "HardSigmoid Tanh Softplus Softmax LogSoftmax Gelu Erf Clip BatchNormalization LayerNormalization Concat "
    "Split Slice Gather GatherElements Reshape Flatten Squeeze Unsqueeze Transpose Expand Tile Shape Size Cast "
    "Constant ConstantOfShape Identity Dropout Where Equal Less Greater Not And ReduceSum ReduceMean ReduceMax "
    "ReduceMin ReduceProd ArgMax Einsum Range CumSum Mod Max Min Sum Mean TopK"
).split()


def test_required_ops_supported():
    missing = [op_type for op_type in REQUIRED_OPS if lookup(op_type) is None]
    assert missing == []


@pytest.mark.parametrize("op_type", [spec.op_type for spec in supported_ops()])
def test_op_covers_opsets(op_type):
    spec = lookup(op_type)
    latest = onnx.defs.onnx_opset_version()
    # Ops newer than opset 13 (Gelu, LayerNormalization, ...) count from their first version.
    first = max(13, schema_versions(op_type)[0])
    for opset in range(first, latest + 1):
        version = onnx.defs.get_schema(op_type, opset, "").since_version
        assert version in spec.versions, f"{op_type} at opset {opset} resolves to version {version}"


def test_versions_are_known_to_onnx():
    for spec in supported_ops():
        assert set(spec.versions) <= set(schema_versions(spec.op_type)), spec.op_type


def test_supported_opsets_merge_ranges():
    assert supported_opsets(lookup("Softmax")) == [(13, onnx.defs.onnx_opset_version())]
    assert supported_opsets(lookup("Dropout")) == [(13, onnx.defs.onnx_opset_version())]


def test_ops_command_table(capsys):
    assert main(["ops"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["op", "versions", "opsets", "limits"]
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert sorted(rows) == [spec.op_type for spec in supported_ops()]
    latest = onnx.defs.onnx_opset_version()
    assert rows["Softmax"].split() == ["Softmax", "13", f"13-{latest}"]
    assert "training_mode=1" in rows["BatchNormalization"]
    assert lines[-1] == f"{len(rows)} ops (default ONNX domain; onnx {onnx.__version__} knows opsets up to {latest})"


def test_ops_command_json(capsys):
    assert main(["ops", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["onnx"] == onnx.__version__
    entries = {entry["op_type"]: entry for entry in table["ops"]}
    assert set(REQUIRED_OPS) <= set(entries)
    assert entries["Reshape"]["versions"] == [13, 14, 19, 21, 23, 24, 25]
    assert entries["Reshape"]["opsets"] == [f"13-{onnx.defs.onnx_opset_version()}"]


def test_ops_command_markdown(capsys):
    assert main(["ops", "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["| op | versions | opsets | limits |", "|---|---|---|---|"]
    assert f"| Gemm | 13 | 13-{onnx.defs.onnx_opset_version()} |  |" in lines
