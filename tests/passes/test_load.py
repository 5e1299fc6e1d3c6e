"""Loading and validating source models: paths, bytes, checker failures, external data confinement."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest

from akfc.errors import ModelError
from akfc.passes import load_model, validate_model


def _save_external(model: onnx.ModelProto, folder: Path, location: str = "weights.bin") -> Path:
    path = folder / "model.onnx"
    # onnx.save moves the weights of the model it is given out to the file, so give it a copy.
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save(copy, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=0)
    return path


def test_load_path(chain, tmp_path):
    path = tmp_path / "chain.onnx"
    onnx.save(chain, path)
    model = load_model(path)
    assert [node.op_type for node in model.graph.node] == [node.op_type for node in chain.graph.node]
    assert [tensor.name for tensor in model.graph.initializer] == ["w1", "b1", "w2", "b2", "w3", "b3", "w4"]


def test_load_bytes(chain):
    model = load_model(chain.SerializeToString())
    assert model.SerializeToString() == chain.SerializeToString()


def test_load_named_output(two_outputs):
    model = load_model(two_outputs.SerializeToString(), output="probabilities")
    assert [value.name for value in model.graph.output] == ["label", "probabilities"]


def test_load_rejects_unknown_output(chain):
    with pytest.raises(ModelError, match=r"output 'prob' not found; the graph outputs are y \(float \[N, 1\]\)"):
        load_model(chain.SerializeToString(), output="prob")


def test_load_rejects_garbage_bytes():
    with pytest.raises(ModelError, match="model bytes: not an ONNX model"):
        load_model(b"certainly not a protobuf \xff\xfe")


def test_load_rejects_text_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("age,income\n39,0\n")
    with pytest.raises(ModelError, match=f"{path}: not an ONNX model"):
        load_model(path)


def test_load_rejects_truncated_file(chain, tmp_path):
    data = chain.SerializeToString()
    path = tmp_path / "chain.onnx"
    path.write_bytes(data[: len(data) // 2])
    graph = chain.graph.SerializeToString()
    graph_size, remaining = len(graph), len(data) // 2 - data.find(graph)
    message = (
        f"{path}: the ONNX file is truncated: it ends inside field 'graph' of the model, which declares {graph_size} "
        f"bytes when only {remaining} follow ({len(data) // 2} bytes in all); copy or export the model again"
    )
    with pytest.raises(ModelError, match=f"^{re.escape(message)}$"):
        load_model(path)


def test_load_rejects_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelError, match=f"^{re.escape(str(path))}: the file is empty \\(0 bytes\\); export or copy the model again$"):
        load_model(path)


def test_load_rejects_model_without_graph(chain):
    # Cut right after the first fields: what is left parses, but the graph is gone.
    header = onnx.ModelProto(ir_version=chain.ir_version, producer_name="pytorch").SerializeToString()
    with pytest.raises(ModelError, match=r"^model bytes: the ONNX model has an IR version but no graph \(\d+ bytes\), so the file may be truncated"):
        load_model(header)


def test_load_rejects_missing_file(tmp_path):
    path = tmp_path / "absent.onnx"
    with pytest.raises(ModelError, match=f"{path}: no such file"):
        load_model(path)


def test_load_rejects_checker_failure(tmp_path):
    model = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
broken (float[N, 4] x) => (float[N, 4] y)
{
    y = Add(x, missing)
}
""")
    path = tmp_path / "broken.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelError, match=f"{path}: fails the ONNX checker: .*missing"):
        load_model(path)


def test_load_rejects_shape_inference_failure():
    model = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
mismatch (float[N, 4] x, float[3, 5] w) => (float[N, 5] y)
{
    y = MatMul(x, w)
}
""")
    with pytest.raises(ModelError, match="model bytes: fails (the ONNX checker|strict ONNX shape inference).*MatMul"):
        load_model(model.SerializeToString())


def test_load_rejects_constant_output():
    model = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
constant (float[N, 4] x) => (float[2] y)
<float[2] c = {1.0, 2.0}>
{
    y = Neg(c)
}
""")
    with pytest.raises(ModelError, match="output 'y' does not depend on any graph input, so it is a constant"):
        load_model(model.SerializeToString())


def test_load_external_data_inside_folder(chain, tmp_path):
    path = _save_external(chain, tmp_path)
    assert (tmp_path / "weights.bin").stat().st_size > 0
    model = load_model(path)
    loaded = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    expected = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in chain.graph.initializer}
    assert loaded.keys() == expected.keys()
    for name, values in expected.items():
        np.testing.assert_array_equal(loaded[name], values)


def test_load_external_data_subfolder(chain, tmp_path):
    (tmp_path / "data").mkdir()
    path = _save_external(chain, tmp_path, location="data/weights.bin")
    model = load_model(path)
    assert all(tensor.data_location == onnx.TensorProto.DEFAULT for tensor in model.graph.initializer)


def _point_external_data(path: Path, location: str) -> None:
    model = onnx.load(path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    # Raw serialisation: onnx.save would try to write the external data again.
    path.write_bytes(model.SerializeToString())


def test_load_rejects_escaping_external_data(chain, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    path = _save_external(chain, folder)
    (folder / "weights.bin").rename(tmp_path / "outside.bin")
    _point_external_data(path, "../outside.bin")
    with pytest.raises(ModelError, match=r"tensor 'w1' reads external data from '../outside.bin', outside the model's folder"):
        load_model(path)


def test_load_rejects_absolute_external_data(chain, tmp_path):
    path = _save_external(chain, tmp_path)
    _point_external_data(path, str(tmp_path / "weights.bin"))
    with pytest.raises(ModelError, match="outside the model's folder"):
        load_model(path)


def test_load_rejects_missing_external_data(chain, tmp_path):
    path = _save_external(chain, tmp_path)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ModelError, match="external data file 'weights.bin' of tensor 'w1' not found"):
        load_model(path)


def test_load_rejects_external_data_from_bytes(chain, tmp_path):
    path = _save_external(chain, tmp_path)
    with pytest.raises(ModelError, match="model bytes: tensor 'w1' is stored in an external data file"):
        load_model(path.read_bytes())


def test_validate_returns_task_output(two_outputs):
    assert validate_model(two_outputs) == "probabilities"
