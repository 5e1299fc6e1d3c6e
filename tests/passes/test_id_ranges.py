"""Embedding-table limits of integer graph inputs, and the guard that keeps ids inside them."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from akfc.passes.id_ranges import embedding_limits, guard_ids
from akfc.runtime import make_session

_MODEL = onnx.parser.parse_model(
    """
    <ir_version: 8, opset_import: ["" : 17]>
    tables (int64[N] job, int32[N] city, int64[N] shifted, float[N] age) => (float[N, 4] y) {
        axes = Constant <value = int64[1] {1}> ()
        job_column = Unsqueeze(job, axes)
        job_vector = Gather(jobs, job_column)
        job_flat = Squeeze(job_vector, axes)
        city64 = Cast <to = 7> (city)
        city_a = Gather(cities_a, city64)
        city_b = Gather(cities_b, city64)
        one = Constant <value = int64 {1}> ()
        moved = Add(shifted, one)
        moved_vector = Gather(jobs, moved)
        sum1 = Add(job_flat, city_a)
        sum2 = Add(sum1, city_b)
        y = Add(sum2, moved_vector)
    }
    """
)
# Distinct rows, so that reading another row changes the output.
_TABLES = [
    onnx.numpy_helper.from_array(np.arange(36, dtype=np.float32).reshape(9, 4), "jobs"),
    onnx.numpy_helper.from_array(100 + np.arange(20, dtype=np.float32).reshape(5, 4), "cities_a"),
    onnx.numpy_helper.from_array(1000 + np.arange(12, dtype=np.float32).reshape(3, 4), "cities_b"),
]
_MODEL.graph.initializer.extend(_TABLES)


def test_limits_follow_passive_ops():
    limits = embedding_limits(_MODEL)
    assert limits["job"] == 9


def test_smallest_table_wins():
    assert embedding_limits(_MODEL)["city"] == 3


def test_value_changing_ops_not_followed():
    limits = embedding_limits(_MODEL)
    assert "shifted" not in limits
    assert "age" not in limits


def _run(model, job, city, shifted):
    session = make_session(model, "cpu", optimize=False)
    feeds = {
        "job": np.array(job, dtype=np.int64), "city": np.array(city, dtype=np.int32),
        "shifted": np.array(shifted, dtype=np.int64), "age": np.zeros(len(job), dtype=np.float32),
    }  # fmt: skip
    return session.run(None, feeds)[0]


def test_guard_maps_outside_ids_to_zero():
    guarded = guard_ids(_MODEL)
    outside = _run(guarded, job=[-1, 9, 10**12, 4], city=[3, -7, 2, 1], shifted=[0, 1, 2, 3])
    as_zero = _run(_MODEL, job=[0, 0, 0, 4], city=[0, 0, 2, 1], shifted=[0, 1, 2, 3])
    np.testing.assert_array_equal(outside, as_zero)


def test_guard_keeps_valid_ids():
    ids = {"job": [0, 8, 3], "city": [2, 0, 1], "shifted": [7, 0, 4]}
    np.testing.assert_array_equal(_run(guard_ids(_MODEL), **ids), _run(_MODEL, **ids))


def test_unguarded_outside_ids_on_cpu():
    # What the guard protects against: onnxruntime's CPU Gather rejects an id past the table's end, but reads a
    # negative one from the end of the table without an error.
    with pytest.raises(InvalidArgument, match=r"indices element out of data bounds, idx=9"):
        _run(_MODEL, job=[9], city=[0], shifted=[0])
    np.testing.assert_array_equal(_run(_MODEL, job=[-1], city=[0], shifted=[0]), _run(_MODEL, job=[8], city=[0], shifted=[0]))


def test_guard_nodes_and_interface():
    guarded = guard_ids(_MODEL, namespace="akf/guard")
    added = [(node.op_type, node.name) for node in guarded.graph.node[:8]]
    assert added == [
        ("Less", "akf/guard/job/Less"), ("GreaterOrEqual", "akf/guard/job/GreaterOrEqual"),
        ("Or", "akf/guard/job/Or"), ("Where", "akf/guard/job/Where"),
        ("Less", "akf/guard/city/Less"), ("GreaterOrEqual", "akf/guard/city/GreaterOrEqual"),
        ("Or", "akf/guard/city/Or"), ("Where", "akf/guard/city/Where"),
    ]  # fmt: skip
    assert len(guarded.graph.node) == len(_MODEL.graph.node) + 8
    limits = {init.name: onnx.numpy_helper.to_array(init) for init in guarded.graph.initializer if init.name.endswith("/rows")}
    assert limits == {"akf/guard/job/rows": 9, "akf/guard/city/rows": 3}
    assert limits["akf/guard/city/rows"].dtype == np.int32
    assert [value.name for value in guarded.graph.input] == [value.name for value in _MODEL.graph.input]
    assert [value.name for value in guarded.graph.output] == ["y"]
    readers = [node.name for node in guarded.graph.node if "job" in node.input]
    assert readers == ["akf/guard/job/Less", "akf/guard/job/GreaterOrEqual", "akf/guard/job/Where"]


def test_guard_without_id_inputs_is_identity():
    model = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        dense (float[N, 3] x) => (float[N, 3] y) {
            y = Relu(x)
        }
        """
    )
    assert guard_ids(model).SerializeToString() == model.SerializeToString()


def test_guard_twice_adds_nothing():
    guarded = guard_ids(_MODEL)
    assert embedding_limits(guarded) == {}
    assert guard_ids(guarded).SerializeToString() == guarded.SerializeToString()
