"""onnxruntime helpers: provider choice and batched runs, in memory and memory-mapped."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest

from akfc.errors import SpecError
from akfc.runtime import make_session, providers, run_batched

_MODEL = onnx.parser.parse_model(
    """
    <ir_version: 8, opset_import: ["" : 17]>
    scale (float[N, 3] x) => (float[N, 3] y, float[N] total) {
        two = Constant <value = float {2.0}> ()
        y = Mul(x, two)
        axes = Constant <value = int64[1] {1}> ()
        total = ReduceSum <keepdims = 0> (y, axes)
    }
    """
)


def test_cpu_provider_always_available():
    assert providers("cpu") == ["CPUExecutionProvider"]
    assert providers("auto")[-1] == "CPUExecutionProvider"


def test_cuda_request_without_cuda_names_fix():
    if "CUDAExecutionProvider" in providers("auto"):
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(SpecError, match=r"install akfc\[gpu\] or use --device cpu"):
        providers("cuda")


def test_batched_run_matches_single_run():
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    session = make_session(_MODEL, "cpu")
    out = run_batched(session, {"x": x}, batch_size=3)
    np.testing.assert_array_equal(out["y"], x * 2)
    np.testing.assert_array_equal(out["total"], (x * 2).sum(axis=1))


def test_batched_run_memory_maps_over_budget(tmp_path):
    x = np.ones((100, 3), dtype=np.float32)
    out = run_batched(make_session(_MODEL, "cpu"), {"x": x}, ["y"], batch_size=7, memory_budget_bytes=100, cache_dir=tmp_path)
    assert isinstance(out["y"], np.memmap)
    np.testing.assert_array_equal(out["y"], x * 2)
    assert len(list(tmp_path.glob("stem-*.npy"))) == 1


def test_zipmap_output_becomes_array():
    from akfc.runtime import _as_array

    rows = [{0: 0.25, 1: 0.75}, {1: 0.5, 0: 0.5}]
    np.testing.assert_array_equal(_as_array(rows), np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32))
