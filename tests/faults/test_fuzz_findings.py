"""Cases the compile fuzz test found, each pinned by a small model built here."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper, numpy_helper

import akfc
from akfc.errors import ModelError
from akfc.metrics import task_metrics


def _mlp(path: Path, head: str | None, classes: int, *, x_dtype: int = TensorProto.FLOAT, seed: int = 0) -> Path:
    """Save x [N, 1] -> Gemm(8) -> Relu -> Gemm(8) -> Relu -> Gemm(classes) -> head."""
    rng = np.random.default_rng(seed)
    shapes = {"w1": (1, 8), "b1": (8,), "w2": (8, 8), "b2": (8,), "w3": (8, classes), "b3": (classes,)}
    initializers = [numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name) for name, shape in shapes.items()]
    nodes, x = [], "x"
    if x_dtype != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT))
        x = "xf"
    nodes += [
        helper.make_node("Gemm", [x, "w1", "b1"], ["g1"]),
        helper.make_node("Relu", ["g1"], ["h1"]),
        helper.make_node("Gemm", ["h1", "w2", "b2"], ["g2"]),
        helper.make_node("Relu", ["g2"], ["h2"]),
        helper.make_node("Gemm", ["h2", "w3", "b3"], ["z"]),
    ]
    output = "z"
    if head is not None:
        nodes.append(helper.make_node(head, ["z"], ["y"], **({"axis": -1} if "Softmax" in head else {})))
        output = "y"
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", x_dtype, ["N", 1])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", classes])], initializers,
    )  # fmt: skip
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _save(model: onnx.ModelProto, path: Path) -> None:
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def _tables(folder: Path, label, rows: tuple[int, int] = (200, 60)) -> None:  # noqa: ANN001 -- label(x, rng) -> labels
    rng = np.random.default_rng(0)
    for name, count in zip(("train", "valid"), rows):
        x = rng.normal(size=count).astype(np.float32)
        pq.write_table(pa.table({"x": x, "y": label(x, rng)}), folder / f"{name}.parquet")


def _compile(folder: Path, *sources: Path, **options) -> akfc.CompileResult:  # noqa: ANN003 -- compile options
    settings = {"epochs": 1, "levels": 1, "width": 4, "heads": 1, "device": "cpu"} | options
    return akfc.compile(
        sources=[f"y={path}" for path in sources], train=folder / "train.parquet", valid=folder / "valid.parquet",
        output=folder / "out" / "fused.onnx", **settings,
    )  # fmt: skip


def test_two_class_softmax_auc():
    labels = np.array([0, 1, 1, 0, 1])
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.5, 0.5], [0.6, 0.4]])
    assert task_metrics("multiclass", labels, probabilities)["auc"] == pytest.approx(5 / 6)


def test_two_class_softmax_sources_compile(tmp_path):
    a, b = _mlp(tmp_path / "a.onnx", "Softmax", 2, seed=0), _mlp(tmp_path / "b.onnx", "Softmax", 2, seed=1)
    _tables(tmp_path, lambda x, rng: (x > 0).astype(np.int64))
    result = _compile(tmp_path, a, b)
    assert result.parity["y"] <= 1e-5


def test_log_softmax_sources_compile(tmp_path):
    a, b = _mlp(tmp_path / "a.onnx", "LogSoftmax", 3, seed=0), _mlp(tmp_path / "b.onnx", "LogSoftmax", 3, seed=1)
    _tables(tmp_path, lambda x, rng: rng.integers(0, 3, len(x)))
    result = _compile(tmp_path, a, b)
    assert result.parity["y"] <= 1e-5
    # The report scores the sources on probabilities, the exp of what a LogSoftmax head returns.
    valid = pq.read_table(tmp_path / "valid.parquet")
    session = ort.InferenceSession(str(a), providers=["CPUExecutionProvider"])
    log_probabilities = session.run(None, {"x": valid.column("x").to_numpy().reshape(-1, 1)})[0]
    expected = task_metrics("multiclass", valid.column("y").to_numpy(), np.exp(log_probabilities))
    reported = result.report["splits"]["valid"]["tasks"]["y"]["sources"]["a"]
    assert reported["logloss"] == pytest.approx(expected["logloss"], abs=1e-6)


def _two_branch_reading_input_whole(path: Path) -> Path:
    """Save x [N, 1] -> (two Relu layers) and (two Relu layers) -> Concat -> MatMul -> Sigmoid.

    The branches differ in FLOPs, so a level frontier passes x itself through.
    """
    rng = np.random.default_rng(1)
    initializers, nodes = [], []

    def linear(x: str, width_in: int, width_out: int, name: str) -> str:
        for suffix, shape in (("w", (width_in, width_out)), ("b", (width_out,))):
            initializers.append(numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), f"{name}_{suffix}"))
        nodes.append(helper.make_node("MatMul", [x, f"{name}_w"], [f"{name}_m"]))
        nodes.append(helper.make_node("Add", [f"{name}_m", f"{name}_b"], [f"{name}_g"]))
        nodes.append(helper.make_node("Relu", [f"{name}_g"], [name]))
        return name

    left = linear(linear("x", 1, 18, "a1"), 18, 23, "a2")
    right = linear(linear("x", 1, 20, "b1"), 20, 3, "b2")
    initializers.append(numpy_helper.from_array(rng.normal(0, 0.5, (26, 1)).astype(np.float32), "wo"))
    nodes += [
        helper.make_node("Concat", [left, right], ["h"], axis=1),
        helper.make_node("MatMul", ["h", "wo"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])], initializers,
    )  # fmt: skip
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_frontier_passing_input_through(tmp_path):
    a = _two_branch_reading_input_whole(tmp_path / "a.onnx")
    b = _mlp(tmp_path / "b.onnx", "Sigmoid", 1, seed=2)
    _tables(tmp_path, lambda x, rng: (x > 0).astype(np.int64))
    # A high learning rate moves the level-1 adapters off zero, so the level that reads x is spliced in.
    result = _compile(tmp_path, a, b, epochs=3, levels=2, lr=1e-2)
    assert result.parity["y"] <= 1e-5


def test_mixed_float_precisions_rejected(tmp_path):
    a = _mlp(tmp_path / "a.onnx", None, 1, seed=0)
    b = _mlp(tmp_path / "b.onnx", None, 1, x_dtype=TensorProto.FLOAT16, seed=1)
    _tables(tmp_path, lambda x, rng: (2 * x + rng.normal(size=len(x))).astype(np.float32))
    message = (
        f"sources 'a' ({a}) and 'b' ({b}) both read column 'x': graph input 'x' as float32 and graph input 'x' as float16. "
        "The fused graph has one input per column, and no single float type gives both sources the values they get alone."
    )
    with pytest.raises(ModelError, match=f"^{re.escape(message)}"):
        _compile(tmp_path, a, b)


def test_shape_only_constant_output_named(tmp_path):
    a = _mlp(tmp_path / "a.onnx", "Sigmoid", 1)
    initializers = [
        numpy_helper.from_array(np.array([[0.3]], np.float32), "c"),
        numpy_helper.from_array(np.array([0]), "s0"),
        numpy_helper.from_array(np.array([1]), "s1"),
    ]
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "s0", "s1"], ["n"]),
        helper.make_node("Concat", ["n", "s1"], ["target"], axis=0),
        helper.make_node("Expand", ["c", "target"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])], initializers,
    )  # fmt: skip
    constant = tmp_path / "constant.onnx"
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), constant)
    _tables(tmp_path, lambda x, rng: (x > 0).astype(np.int64))
    with pytest.raises(ModelError, match=rf"^{re.escape(str(constant))}: output 'constant/y' is not computed from the graph inputs \(at most from their shapes\)"):
        _compile(tmp_path, a, constant)
