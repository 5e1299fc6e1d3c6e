"""Tiny graphs in ONNX text syntax for the graph-pass tests, and a helper to run a model.

Every graph has a symbolic batch dim N. Weights are written into the text as
initializers with seeded random values, so the graphs stay readable and their
outputs are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnxruntime as ort
import pytest

__all__: list[str] = []

_HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def _weight(name: str, *shape: int, seed: int) -> str:
    values = np.random.default_rng(seed).normal(0.0, 0.5, size=shape).round(4).ravel()
    return f"float[{','.join(str(dim) for dim in shape)}] {name} = {{{', '.join(str(value) for value in values)}}}"


def _parse(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    # Store weights as raw bytes, as exporters do (external-data saving only moves raw_data).
    raw = [onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor), tensor.name) for tensor in model.graph.initializer]
    del model.graph.initializer[:]
    model.graph.initializer.extend(raw)
    onnx.checker.check_model(model, full_check=True)
    return model


def _weights(*specs: tuple[str, tuple[int, ...]]) -> str:
    return ", ".join(_weight(name, *shape, seed=seed) for seed, (name, shape) in enumerate(specs))


@pytest.fixture
def chain() -> onnx.ModelProto:
    """x [N, 4] -> three Linear+ReLU layers of width 8 -> Linear -> Sigmoid: y [N, 1]."""
    weights = _weights(("w1", (4, 8)), ("b1", (8,)), ("w2", (8, 8)), ("b2", (8,)), ("w3", (8, 8)), ("b3", (8,)), ("w4", (8, 1)))
    return _parse(f"""
{_HEADER}
chain (float[N, 4] x) => (float[N, 1] y)
<{weights}>
{{
    m1 = MatMul(x, w1)
    a1 = Add(m1, b1)
    h1 = Relu(a1)
    m2 = MatMul(h1, w2)
    a2 = Add(m2, b2)
    h2 = Relu(a2)
    m3 = MatMul(h2, w3)
    a3 = Add(m3, b3)
    h3 = Relu(a3)
    z = MatMul(h3, w4)
    y = Sigmoid(z)
}}
""")


@pytest.fixture
def two_branch() -> onnx.ModelProto:
    """DeepFM-like: field embeddings feed a deep tower and an FM term; their sum goes through a Sigmoid."""
    weights = _weights(("emb", (10, 4)), ("w1", (12, 16)), ("w2", (16, 8)), ("w3", (8, 8)), ("w4", (8, 1)))
    return _parse(f"""
{_HEADER}
two_branch (int64[N, 3] ids) => (float[N, 1] y)
<{weights}, int64[1] one = {{1}}, float half = {{0.5}}>
{{
    e = Gather(emb, ids)
    flat = Flatten(e)
    m1 = MatMul(flat, w1)
    h1 = Relu(m1)
    m2 = MatMul(h1, w2)
    h2 = Relu(m2)
    m3 = MatMul(h2, w3)
    h3 = Relu(m3)
    deep = MatMul(h3, w4)
    s = ReduceSum<keepdims=0>(e, one)
    s2 = Mul(s, s)
    q = Mul(e, e)
    qs = ReduceSum<keepdims=0>(q, one)
    d = Sub(s2, qs)
    fm_sum = ReduceSum<keepdims=1>(d, one)
    fm = Mul(fm_sum, half)
    z = Add(deep, fm)
    y = Sigmoid(z)
}}
""")


@pytest.fixture
def wide_deep() -> onnx.ModelProto:
    """A wide linear term [N, 1] on the raw input beside a deep tower; the wide term stays live to the final Add."""
    weights = _weights(("wide", (6, 1)), ("w1", (6, 16)), ("w2", (16, 16)), ("w3", (16, 8)), ("w4", (8, 1)))
    return _parse(f"""
{_HEADER}
wide_deep (float[N, 6] x) => (float[N, 1] y)
<{weights}>
{{
    w = MatMul(x, wide)
    m1 = MatMul(x, w1)
    h1 = Relu(m1)
    m2 = MatMul(h1, w2)
    h2 = Relu(m2)
    m3 = MatMul(h2, w3)
    h3 = Relu(m3)
    deep = MatMul(h3, w4)
    z = Add(w, deep)
    y = Sigmoid(z)
}}
""")


@pytest.fixture
def residual() -> onnx.ModelProto:
    """x -> layer -> a residual block (two layers plus a skip Add) -> layer -> output layer (regression)."""
    weights = _weights(("w1", (4, 8)), ("w2", (8, 8)), ("w3", (8, 8)), ("w4", (8, 8)), ("w5", (8, 1)))
    return _parse(f"""
{_HEADER}
residual (float[N, 4] x) => (float[N, 1] y)
<{weights}>
{{
    m1 = MatMul(x, w1)
    h1 = Relu(m1)
    m2 = MatMul(h1, w2)
    h2 = Relu(m2)
    m3 = MatMul(h2, w3)
    r = Add(m3, h1)
    h3 = Relu(r)
    m4 = MatMul(h3, w4)
    h4 = Relu(m4)
    y = MatMul(h4, w5)
}}
""")


@pytest.fixture
def two_outputs() -> onnx.ModelProto:
    """A classifier with a label output (int64, first) and a probability output (Softmax over 3 classes)."""
    weights = _weights(("w1", (4, 8)), ("w2", (8, 8)), ("w3", (8, 3)))
    return _parse(f"""
{_HEADER}
two_outputs (float[N, 4] x) => (int64[N] label, float[N, 3] probabilities)
<{weights}>
{{
    m1 = MatMul(x, w1)
    h1 = Relu(m1)
    m2 = MatMul(h1, w2)
    h2 = Relu(m2)
    z = MatMul(h2, w3)
    probabilities = Softmax<axis=1>(z)
    label = ArgMax<axis=1, keepdims=0>(probabilities)
}}
""")


@pytest.fixture
def shared_output() -> onnx.ModelProto:
    """The score z is a graph output and is also read by the Sigmoid that makes the second output."""
    weights = _weights(("w1", (4, 8)), ("w2", (8, 8)), ("w3", (8, 1)))
    return _parse(f"""
{_HEADER}
shared_output (float[N, 4] x) => (float[N, 1] z, float[N, 1] p)
<{weights}>
{{
    m1 = MatMul(x, w1)
    h1 = Relu(m1)
    m2 = MatMul(h1, w2)
    h2 = Relu(m2)
    z = MatMul(h2, w3)
    p = Sigmoid(z)
}}
""")


@pytest.fixture
def unused_input() -> onnx.ModelProto:
    """A chain whose second input, extra, is read by no node."""
    weights = _weights(("w1", (4, 8)), ("w2", (8, 8)), ("w3", (8, 1)))
    return _parse(f"""
{_HEADER}
unused_input (float[N, 4] x, float[N, 2] extra) => (float[N, 1] y)
<{weights}>
{{
    m1 = MatMul(x, w1)
    h1 = Relu(m1)
    m2 = MatMul(h1, w2)
    h2 = Relu(m2)
    z = MatMul(h2, w3)
    y = Sigmoid(z)
}}
""")


@pytest.fixture
def shape_chain() -> onnx.ModelProto:
    """Legacy-exporter style: the batch size comes from Shape(x) and feeds Reshapes at both ends of the graph.

    x [N, 3, 4] is flattened with Reshape(x, [Shape(x)[0], -1]); after three
    layers the hidden state is reshaped to [Shape(x)[0], 2, 4], so the block
    holding that Reshape needs the batch size of a tensor it does not have.
    """
    weights = _weights(("w1", (12, 8)), ("w2", (8, 8)), ("w3", (8, 8)), ("w4", (4, 1)))
    return _parse(f"""
{_HEADER}
shape_chain (float[N, 3, 4] x) => (float[N, 1] y)
<{weights}, int64 zero = {{0}}, int64[1] axis0 = {{0}}, int64[1] minus_one = {{-1}}, int64[2] tail = {{2, 4}}, int64[1] one = {{1}}>
{{
    s = Shape(x)
    b = Gather(s, zero)
    bu = Unsqueeze(b, axis0)
    flat_shape = Concat<axis=0>(bu, minus_one)
    flat = Reshape(x, flat_shape)
    m1 = MatMul(flat, w1)
    h1 = Relu(m1)
    m2 = MatMul(h1, w2)
    h2 = Relu(m2)
    m3 = MatMul(h2, w3)
    h3 = Relu(m3)
    split_shape = Concat<axis=0>(bu, tail)
    r = Reshape(h3, split_shape)
    pooled = ReduceSum<keepdims=0>(r, one)
    z = MatMul(pooled, w4)
    y = Sigmoid(z)
}}
""")


def _run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip((value.name for value in session.get_outputs()), session.run(None, dict(feeds))))


@pytest.fixture
def run() -> Callable[[onnx.ModelProto, Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    """Run a model in onnxruntime with graph optimisations off; return its outputs by name."""
    return _run


def _random_feeds(model: onnx.ModelProto, rows: int = 7, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    initializers = {tensor.name for tensor in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        shape = [rows if dim.dim_param else dim.dim_value for dim in tensor_type.shape.dim]
        if tensor_type.elem_type == onnx.TensorProto.INT64:
            feeds[value.name] = rng.integers(0, 10, size=shape).astype(np.int64)
        else:
            feeds[value.name] = rng.normal(size=shape).astype(np.float32)
    return feeds


@pytest.fixture
def feeds() -> Callable[..., dict[str, np.ndarray]]:
    """Random inputs for every graph input of a model: feeds(model, rows=7, seed=0)."""
    return _random_feeds
