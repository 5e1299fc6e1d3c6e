"""`akfc inspect`: table, JSON document, pictures and errors, on tiny graphs and a zoo model."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnx.parser
import pytest

from akfc.cli import main
from akfc.errors import SpecError
from akfc.commands.inspect import parse_frontier

_CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
chain (float[N, 4] x) => (float[N, 1] y)
<float[4, 8] w1 = {W1}, float[8, 8] w2 = {W2}, float[8, 8] w3 = {W3}, float[8, 1] w4 = {W4}>
{
    m1 = MatMul(x, w1)
    h1 = Relu(m1)
    m2 = MatMul(h1, w2)
    h2 = Relu(m2)
    m3 = MatMul(h2, w3)
    h3 = Relu(m3)
    z = MatMul(h3, w4)
    y = Sigmoid(z)
}
"""

MODEL_KEYS = {
    "path", "producer", "ir_version", "source_opset", "opset", "inputs", "output", "logit", "activation", "kind",
    "inferred_kind", "levels", "params", "flops", "metadata",
}  # fmt: skip
COMPONENT_KEYS = {"name", "kind", "level", "identity", "nodes", "ops", "params", "flops", "inputs", "outputs"}


@pytest.fixture
def chain_file(tmp_path: Path) -> Path:
    text = _CHAIN
    for name, count in (("W1", 32), ("W2", 64), ("W3", 64), ("W4", 8)):
        text = text.replace(name, ", ".join(f"{(index % 7 - 3) / 10}" for index in range(count)), 1)
    model = onnx.parser.parse_model(text)
    model.producer_name, model.producer_version = "handwritten", "1"
    path = tmp_path / "chain.onnx"
    onnx.save(model, path)
    return path


def _inspect_json(capsys, *args: str) -> dict:
    assert main(["inspect", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_inspect_table(chain_file, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    assert main(["inspect", str(chain_file)]) == 0
    out = capsys.readouterr().out
    for name in ("stem", "block1", "block2", "block3", "head"):
        assert name in out
    assert "h1 [N, 8]" in out
    assert "MatMul x1" in out
    assert "chain.onnx: opset 17, producer handwritten 1; task output y (sigmoid, logit z); kind binary; 3 levels" in out


def test_inspect_json(chain_file, capsys):
    document = _inspect_json(capsys, str(chain_file))
    assert set(document) == {"model", "components", "frontiers"}
    model = document["model"]
    assert set(model) == MODEL_KEYS
    assert (model["output"], model["logit"], model["activation"], model["kind"], model["levels"]) == ("y", "z", "sigmoid", "binary", 3)
    assert (model["opset"], model["source_opset"], model["producer"]) == (17, 17, "handwritten 1")
    assert model["inputs"] == [{"name": "x", "dtype": "float", "shape": ["N", 4], "width": 4}]
    components = document["components"]
    assert [component["name"] for component in components] == ["stem", "block1", "block2", "block3", "head"]
    assert all(set(component) == COMPONENT_KEYS for component in components)
    block1 = components[1]
    assert (block1["kind"], block1["level"], block1["identity"], block1["nodes"]) == ("block", 1, False, 2)
    assert block1["ops"] == {"MatMul": 1, "Relu": 1}
    assert (block1["params"], block1["flops"]) == (32, 72)
    assert block1["outputs"] == [{"name": "h1", "dtype": "float", "shape": ["N", 8], "width": 8}]
    assert components[0]["identity"] is True
    assert [frontier["tensors"] for frontier in document["frontiers"]] == [["x"], ["h1"], ["h2"], ["h3"]]
    assert [frontier["width"] for frontier in document["frontiers"]] == [4, 8, 8, 8]


def test_inspect_levels(chain_file, capsys):
    document = _inspect_json(capsys, str(chain_file), "--levels", "1")
    assert [component["name"] for component in document["components"]] == ["stem", "block1", "head"]


def test_inspect_frontier_option(chain_file, capsys):
    document = _inspect_json(capsys, str(chain_file), "--frontier", "1=h2")
    assert document["frontiers"][1]["tensors"] == ["h2"]


def test_inspect_kind_option(chain_file, capsys):
    model = _inspect_json(capsys, str(chain_file), "--kind", "regression")["model"]
    assert (model["kind"], model["inferred_kind"]) == ("regression", "binary")


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_inspect_picture(chain_file, tmp_path, capsys, fmt):
    picture = tmp_path / f"chain.{fmt}"
    assert main(["inspect", str(chain_file), f"--{fmt}", str(picture)]) == 0
    assert f"picture written to {picture}" in capsys.readouterr().out
    data = picture.read_bytes()
    if fmt == "png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
    else:
        assert b"<svg" in data[:500]


def test_inspect_picture_bad_suffix(chain_file, tmp_path, capsys):
    assert main(["inspect", str(chain_file), "--png", str(tmp_path / "chain.jpg")]) == 2
    assert "the picture format must be .svg or .png" in capsys.readouterr().err


def test_inspect_png_and_svg_exclusive(chain_file, tmp_path):
    with pytest.raises(SystemExit) as error:
        main(["inspect", str(chain_file), "--png", str(tmp_path / "a.png"), "--svg", str(tmp_path / "a.svg")])
    assert error.value.code == 2


def test_inspect_missing_file(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "absent.onnx")]) == 2
    assert f"akfc inspect: error: {tmp_path / 'absent.onnx'}: no such file" in capsys.readouterr().err


def test_inspect_bad_levels(chain_file, capsys):
    assert main(["inspect", str(chain_file), "--levels", "0"]) == 2
    assert "--levels 0: the number of levels must be at least 1" in capsys.readouterr().err


def test_parse_frontier():
    assert parse_frontier("2=relu_1, add_3") == (2, ["relu_1", "add_3"])
    with pytest.raises(SpecError, match="expected K=TENSOR"):
        parse_frontier("relu_1")


def test_inspect_zoo_deepfm(tiny_zoo, tmp_path, capsys):
    path = tiny_zoo["deepfm", "legacy"]
    document = _inspect_json(capsys, str(path), "--png", str(tmp_path / "deepfm.png"))
    assert document["model"]["producer"].startswith("pytorch")
    assert [frontier["width"] for frontier in document["frontiers"]] == [63, 129, 65, 33]
    assert document["components"][-1]["ops"] == {"Gemm": 1, "Add": 1, "Sigmoid": 1}
    assert (tmp_path / "deepfm.png").stat().st_size > 10_000

