"""Broken or awkward source models: each gets one ModelError, SpecError or DataError that names it, or is handled.

The graphs are small and written in ONNX text syntax; the compile-level tests
run them on a 128-row table, so each takes seconds.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from akfc.data import InputSignature, bind_input
from akfc.errors import DataError, ModelError, SpecError
from akfc.passes.batch_axis import check_batch_axis, fixed_batch_inputs, make_batch_dynamic
from akfc.passes.normalize import normalize
from akfc.pipeline import compile, plan
from akfc.spec import CompileSpec, SourceSpec

_HEADER = '<ir_version: 8, opset_import: ["" : 18]>'
_ROWS = 128
_FEATURES = ["a", "b", "c", "d"]


def _weights(*specs: tuple[str, tuple[int, ...]]) -> str:
    rng = np.random.default_rng(7)
    parts = []
    for name, shape in specs:
        values = rng.normal(0.0, 0.5, size=shape).round(3).ravel()
        parts.append(f"float[{','.join(map(str, shape))}] {name} = {{{', '.join(map(str, values))}}}")
    return ", ".join(parts)


def _parse(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(f"{_HEADER}\n{text}")
    onnx.checker.check_model(model, full_check=True)
    return model


def _mlp(batch: str = "N", middle: str = "Relu") -> onnx.ModelProto:
    """x [batch, 4] -> three layers (the second activation is `middle`) -> Sigmoid: y [batch, 1]."""
    weights = _weights(("w1", (4, 8)), ("w2", (8, 8)), ("w3", (8, 8)), ("w4", (8, 1)))
    return _parse(f"""
mlp (float[{batch}, 4] x) => (float[{batch}, 1] y)
<{weights}>
{{
    m1 = MatMul(x, w1)
    h1 = Relu(m1)
    m2 = MatMul(h1, w2)
    h2 = {middle}(m2)
    m3 = MatMul(h2, w3)
    h3 = Relu(m3)
    z = MatMul(h3, w4)
    y = Sigmoid(z)
}}
""")


def _column_model(column: str, dtype: str, shape: str = "N") -> onnx.ModelProto:
    """One input named after a data column, cast to float: [N] or [N, k] of `dtype` -> three layers -> Sigmoid."""
    width = 1 if shape == "N" else int(shape.split(",")[1])
    weights = _weights(("w1", (width, 8)), ("w2", (8, 8)), ("w3", (8, 1)))
    reshape = "u = Unsqueeze(f, one)" if shape == "N" else "u = Identity(f)"
    return _parse(f"""
column ({dtype}[{shape}] {column}) => (float[N, 1] y)
<{weights}, int64[1] one = {{1}}>
{{
    f = Cast<to=1>({column})
    {reshape}
    m1 = MatMul(u, w1)
    h1 = Relu(m1)
    m2 = MatMul(h1, w2)
    h2 = Relu(m2)
    z = MatMul(h2, w3)
    y = Sigmoid(z)
}}
""")


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


@pytest.fixture
def tables(tmp_path: Path) -> tuple[Path, Path]:
    """Train and valid Parquet files: float32 features a-d, int64 ids 0..4, binary labels income and marital."""
    rng = np.random.default_rng(3)
    paths = []
    for split in ("train", "valid"):
        columns = {name: rng.normal(size=_ROWS).astype(np.float32) for name in _FEATURES}
        columns["ids"] = rng.integers(0, 5, size=_ROWS).astype(np.int64)
        columns["income"] = (rng.random(_ROWS) > 0.5).astype(np.int64)
        columns["marital"] = (rng.random(_ROWS) > 0.5).astype(np.int64)
        path = tmp_path / f"{split}.parquet"
        pq.write_table(pa.table(columns), path)
        paths.append(path)
    return paths[0], paths[1]


def _spec(tables: tuple[Path, Path], output: Path, *sources: SourceSpec, **options) -> CompileSpec:
    return CompileSpec(
        sources=list(sources), tasks={}, train=tables[0], valid=tables[1], output=output, epochs=0, **options
    ).validate()


def _packed(task: str, path: Path, **fields) -> SourceSpec:
    return SourceSpec(task, path, inputs={"x": list(_FEATURES)}, **fields)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# -- a fixed batch axis ------------------------------------------------------------------------------


def _fixed_flatten(allowzero: int = 0) -> onnx.ModelProto:
    """An export traced at batch 1: x [1, 2, 4] is flattened by a Reshape to the constant [1, -1]."""
    weights = _weights(("w1", (8, 8)), ("w2", (8, 8)), ("w3", (8, 1)))
    return _parse(f"""
fixed (float[1, 2, 4] x) => (float[1, 1] y)
<{weights}, int64[2] flat_shape = {{1, -1}}>
{{
    flat = Reshape<allowzero={allowzero}>(x, flat_shape)
    m1 = MatMul(flat, w1)
    h1 = Relu(m1)
    m2 = MatMul(h1, w2)
    h2 = Relu(m2)
    z = MatMul(h2, w3)
    y = Sigmoid(z)
}}
""")


@pytest.mark.parametrize("allowzero", [0, 1])
def test_fixed_batch_made_dynamic(allowzero):
    original = _fixed_flatten(allowzero)
    freed = make_batch_dynamic(original, origin="fixed.onnx")
    assert fixed_batch_inputs(original) == {"x": 1}
    assert fixed_batch_inputs(freed) == {}
    assert freed.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert freed.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    reshape = next(node for node in freed.graph.node if node.op_type == "Reshape")
    shape = next(tensor for tensor in freed.graph.initializer if tensor.name == reshape.input[1])
    assert onnx.numpy_helper.to_array(shape).tolist() == [0, -1]
    assert "flat_shape" not in {tensor.name for tensor in freed.graph.initializer}

    rows = np.random.default_rng(0).normal(size=(64, 2, 4)).astype(np.float32)
    reference = np.concatenate([_session(original).run(None, {"x": rows[i : i + 1]})[0] for i in range(64)])
    np.testing.assert_array_equal(_session(freed).run(None, {"x": rows[:1]})[0], reference[:1])
    batched = _session(freed).run(None, {"x": rows})[0]
    assert batched.shape == (64, 1)
    np.testing.assert_allclose(batched, reference, rtol=1e-6, atol=1e-7)


def test_dynamic_batch_left_alone():
    model = _mlp()
    freed = make_batch_dynamic(model, origin="mlp.onnx")
    assert freed.SerializeToString() == model.SerializeToString()


def test_fixed_batch_reshape_to_other_size():
    model = _parse("""
fixed (float[1, 12] x) => (float[3, 4] y)
<int64[2] s = {3, 4}>
{
    y = Reshape(x, s)
}
""")
    message = (
        "fixed.onnx: graph inputs 'x' fix the batch size at 1, and unnamed node (Reshape, output 'y') reshapes 'x' "
        "[batch, 12] by the constant 's' = [3, 4], which fixes the batch size at 3; re-export the model with a dynamic "
        "batch axis (dynamic_axes={'x': {0: 'batch'}} in torch.onnx.export, or dynamic_shapes with dynamo=True) and "
        "compute shapes from the input (x.flatten(1) or x.reshape(x.shape[0], -1)) instead of from a fixed batch size"
    )
    with pytest.raises(ModelError, match=f"^{re.escape(message)}$"):
        make_batch_dynamic(model, origin="fixed.onnx")


def test_fixed_batch_tile_rejected():
    model = _parse("""
fixed (float[1, 4] x) => (float[2, 4] y)
<int64[2] r = {2, 1}>
{
    y = Tile(x, r)
}
""")
    with pytest.raises(ModelError, match=r"unnamed node \(Tile, output 'y'\) tiles 'x' \[batch, 4\] by the constant 'r' = \[2, 1\], which repeats every row 2 times"):
        make_batch_dynamic(model, origin="tile.onnx")


def test_fixed_batch_state_rejected():
    # A recurrent-style initial state of batch 1 concatenated beside the input.
    model = _parse("""
fixed (float[1, 4] x) => (float[1, 1] y)
<float[1, 4] h0 = {0.5, 0.5, 0.5, 0.5}, float[8, 1] w = {1, 1, 1, 1, 1, 1, 1, 1}>
{
    joined = Concat<axis=1>(x, h0)
    y = MatMul(joined, w)
}
""")
    with pytest.raises(ModelError, match=r"^state.onnx: graph inputs 'x' fix the batch size at 1, and onnxruntime fails on 3 rows at once: .*Concat.*re-export the model"):
        make_batch_dynamic(model, origin="state.onnx")


def test_fixed_batch_mixing_rows_rejected():
    model = _parse("""
fixed (float[1, 4] x) => (float[1, 4] y)
<int64[1] batch_axis = {0}>
{
    total = ReduceSum<keepdims=1>(x, batch_axis)
    y = Sub(x, total)
}
""")
    with pytest.raises(ModelError, match=r"^mix.onnx: graph inputs 'x' fix the batch size at 1; with 3 rows at once, output 'y' differs from 1 row at a time, so its rows depend on each other; re-export"):
        make_batch_dynamic(model, origin="mix.onnx")


def test_fixed_batch_sizes_differ():
    model = _parse("""
fixed (float[1, 4] x, float[2, 3] z) => (float[1, 4] y)
{
    y = Relu(x)
}
""")
    with pytest.raises(ModelError, match=r"^two.onnx: the graph inputs fix different sizes of dim 0 \('x' \(1\), 'z' \(2\)\), so akfc cannot tell the batch axis"):
        make_batch_dynamic(model, origin="two.onnx")


@pytest.mark.slow
def test_fixed_batch_source_compiles(tables, tmp_path):
    # A packed input traced at batch 1 and split into two fields by a Reshape to the constant [1, 2, 4].
    weights = _weights(("w1", (4, 8)), ("w2", (8, 8)), ("w3", (8, 1)))
    fixed = _parse(f"""
fixed (float[1, 8] x) => (float[1, 1] y)
<{weights}, int64[3] fields = {{1, 2, 4}}, int64[1] field_axis = {{1}}>
{{
    split = Reshape(x, fields)
    pooled = ReduceSum<keepdims=0>(split, field_axis)
    m1 = MatMul(pooled, w1)
    h1 = Relu(m1)
    m2 = MatMul(h1, w2)
    h2 = Relu(m2)
    z = MatMul(h2, w3)
    y = Sigmoid(z)
}}
""")
    path = _save(fixed, tmp_path / "fixed.onnx")
    columns = ["a", "b", "c", "d", "d", "c", "b", "a"]
    result = compile(_spec(tables, tmp_path / "out" / "fused.onnx", SourceSpec("income", path, inputs={"x": columns})))
    assert result.parity["income"] <= 1e-5

    # the fused graph takes all rows at once and equals the source run one row at a time
    table = pq.read_table(tables[1])
    rows = np.stack([table.column(name).to_numpy() for name in columns], axis=1).astype(np.float32)
    reference = np.concatenate([_session(fixed).run(None, {"x": rows[i : i + 1]})[0] for i in range(_ROWS)])
    fused = ort.InferenceSession(str(result.output), providers=["CPUExecutionProvider"])
    outputs = fused.run(["income"], {name: table.column(name).to_numpy() for name in _FEATURES})[0]
    assert outputs.shape == (_ROWS, 1)
    np.testing.assert_allclose(outputs, reference, atol=1e-6)


# -- a constant shape that fixes the batch inside a dynamic graph ----------------------------------------


def test_reshape_fixed_batch_rejected():
    weights = _weights(("w1", (4, 8)), ("w2", (8, 1)))
    model = _parse(f"""
baked (float[N, 4] x) => (float[32, 1] y)
<{weights}, int64[2] shape = {{32, -1}}>
{{
    m1 = MatMul(x, w1)
    h1 = Relu(m1)
    flat = Reshape(h1, shape)
    z = MatMul(flat, w2)
    y = Sigmoid(z)
}}
""")
    model.graph.node[2].name = "flatten"
    message = (
        "models/baked.onnx: node 'flatten' (Reshape, output 'flat') reshapes 'h1' [N, 8] by the constant 'shape' = "
        "[32, -1], which fixes the batch size at 32; a source must accept any number of rows, so compute shapes from "
        "the input (x.flatten(1) or x.reshape(x.shape[0], -1)) instead of from a fixed batch size and export the model again"
    )
    with pytest.raises(ModelError, match=f"^{re.escape(message)}$"):
        normalize(model, "baked", origin="models/baked.onnx")


def test_expand_fixed_batch_rejected():
    model = _parse("""
baked (float[N, 1] x) => (float[32, 4] y)
<int64[2] shape = {32, 4}>
{
    y = Expand(x, shape)
}
""")
    with pytest.raises(ModelError, match=r"^expand.onnx: unnamed node \(Expand, output 'y'\) expands 'x' \[N, 1\] by the constant 'shape' = \[32, 4\], which fixes the batch size at 32"):
        check_batch_axis(model, origin="expand.onnx")


def test_batch_following_shapes_accepted():
    model = _parse("""
free (float[N, 2, 4] x) => (float[N, 8] y)
<int64[2] flat = {-1, 8}, int64[2] copy = {0, 8}, int64[2] wide = {1, 8}, int64[2] once = {1, 1}>
{
    a = Reshape(x, flat)
    b = Reshape(a, copy)
    c = Expand(b, wide)
    y = Tile(c, once)
}
""")
    check_batch_axis(model, origin="free.onnx")


# -- training mode -------------------------------------------------------------------------------------


def test_batchnorm_training_mode_rejected():
    model = _parse("""
bn (float[N, 2] x) => (float[N, 2] y)
<float[2] scale = {1, 1}, float[2] bias = {0, 0}, float[2] mean = {0, 0}, float[2] var = {1, 1}>
{
    y, running_mean, running_var = BatchNormalization<training_mode=1>(x, scale, bias, mean, var)
}
""")
    model.graph.node[0].name = "bn1"
    message = (
        "models/bn.onnx: node 'bn1' (BatchNormalization, output 'y') is in training mode (training_mode=1): it "
        "normalises each batch with that batch's own mean and variance, so a row's output depends on the other rows; "
        "export the model in eval mode: call model.eval() before torch.onnx.export"
    )
    with pytest.raises(ModelError, match=f"^{re.escape(message)}$"):
        normalize(model, "bn", origin="models/bn.onnx")


def test_dropout_training_constant_rejected():
    model = _parse("""
drop (float[N, 4] x) => (float[N, 4] y)
<float ratio = {0.5}, bool training = {1}>
{
    y = Dropout(x, ratio, training)
}
""")
    message = (
        "drop.onnx: unnamed node (Dropout, output 'y') is in training mode (its training_mode input 'training' is true), "
        "so it zeroes random values on every run; export the model in eval mode: call model.eval() before torch.onnx.export"
    )
    with pytest.raises(ModelError, match=f"^{re.escape(message)}$"):
        normalize(model, origin="drop.onnx")


def test_dropout_training_input_rejected():
    model = _parse("""
drop (float[N, 4] x, bool training) => (float[N, 4] y)
<float ratio = {0.5}>
{
    y = Dropout(x, ratio, training)
}
""")
    with pytest.raises(ModelError, match=r"its training_mode input is the graph input 'training', not a constant false\), so it zeroes"):
        normalize(model, origin="drop.onnx")


def test_dropout_inference_removed():
    model = _parse("""
drop (float[N, 4] x) => (float[N, 4] y)
<float ratio = {0.5}, bool training = {0}>
{
    h = Relu(x)
    y = Dropout(h, ratio, training)
}
""")
    assert [node.op_type for node in normalize(model, origin="drop.onnx").model.graph.node] == ["Relu"]


# -- sources that disagree on a shared column ---------------------------------------------------------


def test_column_float_int_conflict(tables, tmp_path):
    # The ids column is int64 in the data: one source reads it as a float value, the other as int64 ids.
    floats = _save(_column_model("ids", "float"), tmp_path / "floats.onnx")
    ints = _save(_column_model("ids", "int64"), tmp_path / "ints.onnx")
    spec = _spec(tables, tmp_path / "out" / "fused.onnx", SourceSpec("income", floats), SourceSpec("marital", ints))
    message = (
        f"sources 'floats' ({floats}) and 'ints' ({ints}) both read column 'ids': graph input 'ids' as float32 and graph "
        "input 'ids' as int64. The fused graph has one input per column, and neither type converts to the other without "
        "loss. Re-export one model with the other's input type, or bind one input to another column with "
        'inputs = { ids = "COLUMN" } in its [[source]] table'
    )
    with pytest.raises(ModelError, match=f"^{re.escape(message)}$"):
        plan(spec, tmp_path)


def test_column_fractions_for_int_input(tables, tmp_path):
    # The data decides first: column a has fractions, so the int64 reader cannot take it at all.
    floats = _save(_column_model("a", "float"), tmp_path / "floats.onnx")
    ints = _save(_column_model("a", "int64"), tmp_path / "ints.onnx")
    spec = _spec(tables, tmp_path / "out" / "fused.onnx", SourceSpec("income", floats), SourceSpec("marital", ints))
    with pytest.raises(DataError, match=r"^data file .*train.parquet: column 'a' has non-integer value .* at row 0 but the graph input needs int64"):
        plan(spec, tmp_path)


def test_column_int32_feeds_int64(tables, tmp_path):
    wide = _save(_column_model("ids", "int64"), tmp_path / "wide.onnx")
    narrow = _save(_column_model("ids", "int32"), tmp_path / "narrow.onnx")
    fusion = plan(_spec(tables, tmp_path / "out" / "fused.onnx", SourceSpec("income", wide), SourceSpec("income", narrow)), tmp_path)
    assert [(fused.column, fused.dtype) for fused in fusion.fused_inputs] == [("ids", np.dtype(np.int32))]


def test_column_shape_conflict(tables, tmp_path):
    single = _save(_column_model("a", "float"), tmp_path / "single.onnx")
    wide = _save(_column_model("a", "float", shape="N, 3"), tmp_path / "wide.onnx")
    spec = _spec(tables, tmp_path / "out" / "fused.onnx", SourceSpec("income", single), SourceSpec("income", wide))
    message = (
        f"source 'wide' ({wide}) reads column 'a' through graph input 'a' of shape [N, 3], but a column holds one value "
        "per row (source 'single' reads it through 'a' as float32 [N]); bind the input to an ordered list of 3 columns "
        'with inputs = { a = ["COLUMN", ...] } in its [[source]] table'
    )
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        plan(spec, tmp_path)


def test_bind_int32_lossless():
    table = pa.table({"ids": np.array([0, 3, 2**31 - 1], dtype=np.int64)})
    values = bind_input(table, InputSignature("ids", np.dtype(np.int32), ("N",)), "ids", "data.parquet")
    assert values.dtype == np.int32
    assert values.tolist() == [0, 3, 2**31 - 1]


def test_bind_int32_out_of_range():
    table = pa.table({"ids": np.array([0, 2**31, 5, -(2**40)], dtype=np.int64)})
    with pytest.raises(DataError, match=r"^data file data.parquet: column 'ids' has values out of range for int32 \(rows 1, 3\)$"):
        bind_input(table, InputSignature("ids", np.dtype(np.int32), ("N",)), "ids", "data.parquet")


# -- an op that torch cannot run after the stem ----------------------------------------------------------


def test_unlowerable_op_after_stem(tables, tmp_path):
    path = _save(_mlp(middle="Tan"), tmp_path / "odd.onnx")
    with pytest.raises(ModelError) as error:
        plan(_spec(tables, tmp_path / "out" / "fused.onnx", _packed("income", path)), tmp_path)
    message = str(error.value)
    assert message.startswith("odd block")
    assert "node 'odd/Tan_3' is Tan version 7 (opset 18), which akfc cannot lower to torch" in message
    assert message.endswith(
        f"Source 'odd' ({path}): blocks and heads are lowered to torch, but the stem runs in onnxruntime and may contain "
        "any op it supports, so end the stem after this node: name the tensors that cut the graph there as frontier 0, "
        'boundaries = [["TENSOR", ...]], in the source\'s [[source]] table'
    )


def test_unlowerable_op_moved_into_stem(tables, tmp_path):
    path = _save(_mlp(middle="Tan"), tmp_path / "odd.onnx")
    # the boundary names the tensor as the file does; akfc adds the source id itself
    fusion = plan(_spec(tables, tmp_path / "out" / "fused.onnx", _packed("income", path, boundaries=[["h2"]])), tmp_path)
    stem = fusion.sources[0].components[0]
    assert "Tan" in {node.op_type for node in stem.graph.node}
    assert [tensor.name for tensor in stem.graph.output] == ["odd/h2"]


# -- the same file twice -------------------------------------------------------------------------------


def test_same_file_same_task(tables, tmp_path):
    path = _save(_mlp(), tmp_path / "mlp.onnx")
    spec = _spec(tables, tmp_path / "out" / "fused.onnx", _packed("income", path), _packed("income", path))
    message = (
        f"source {path} is given twice for task 'income'; a second copy adds nothing to the task's mixture, so remove "
        "one [[source]] entry or TASK=PATH argument"
    )
    with pytest.raises(SpecError, match=f"^{re.escape(message)}$"):
        compile(spec)


def test_same_content_same_task(tables, tmp_path):
    path = _save(_mlp(), tmp_path / "mlp.onnx")
    copy = Path(shutil.copy(path, tmp_path / "copy.onnx"))
    spec = _spec(tables, tmp_path / "out" / "fused.onnx", _packed("income", path), _packed("income", copy))
    with pytest.raises(SpecError, match=f"^source {re.escape(str(copy))} is given twice for task 'income' \\(same content as {re.escape(str(path))}\\);"):
        compile(spec)


def test_same_file_two_tasks(tables, tmp_path, caplog):
    path = _save(_mlp(), tmp_path / "mlp.onnx")
    caplog.set_level(logging.WARNING, logger="akfc.pipeline")
    fusion = plan(_spec(tables, tmp_path / "out" / "fused.onnx", _packed("income", path), _packed("marital", path)), tmp_path)
    assert [(source.spec.name, source.spec.task) for source in fusion.sources] == [("mlp", "income"), ("mlp_2", "marital")]
    assert f"source {path} is the same file as {path}; it serves tasks income and marital" in caplog.text
