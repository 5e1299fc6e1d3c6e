"""Embedding-table limits of integer graph inputs."""

from __future__ import annotations

import onnx
import onnx.parser

from akfc.passes.id_ranges import embedding_limits

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
_TABLES = [
    onnx.helper.make_tensor("jobs", onnx.TensorProto.FLOAT, [9, 4], [0.0] * 36),
    onnx.helper.make_tensor("cities_a", onnx.TensorProto.FLOAT, [5, 4], [0.0] * 20),
    onnx.helper.make_tensor("cities_b", onnx.TensorProto.FLOAT, [3, 4], [0.0] * 12),
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
