"""ONNX backend conformance: the onnx package's node test cases, run through the torch lowering.

`onnx.backend.test.BackendTest` generates the node cases in memory (1,884 in
onnx 1.23.2). This module keeps every case whose graph uses only ops the
lowering supports, the `*_expanded` cases of function ops included. Each case
runs through `LoweringBackend` on CPU, and on CUDA when a GPU is visible
(the CUDA variants are left out otherwise).
Only the cases listed below are excluded, each with its reason.
"""

from __future__ import annotations

import re
import unittest
import warnings

import onnx
import onnx.backend.test
import pytest
import torch
from onnx import TensorProto
from onnx.backend.test.loader import load_model_tests
from onnx.backend.test.runner import Runner

from akfc.lower.backend import LoweringBackend
from akfc.lower import supported_ops
from akfc.lower.registry import ONNX_DOMAINS, lookup

# Cases excluded because a graph input or output has an element type torch
# cannot hold, or cannot convert the way ONNX specifies.
EXCLUDED_TYPES: dict[int, str] = {
    TensorProto.STRING: "torch has no string tensors",
    TensorProto.INT4: "torch has no 4-bit integer type with arithmetic or conversions",
    TensorProto.UINT4: "torch has no 4-bit integer type with arithmetic or conversions",
    TensorProto.INT2: "torch has no 2-bit integer type with arithmetic or conversions",
    TensorProto.UINT2: "torch has no 2-bit integer type with arithmetic or conversions",
    TensorProto.FLOAT4E2M1: "torch's float4 type is packed two per byte and has no conversions",
}

# Cases excluded by name (a regular expression on the case name).
EXCLUDED_CASES: dict[str, str] = {
    r"^test_(add|sub|div|mod|max|min|less|greater|less_equal|greater_equal)_uint(16|32|64)(_expanded)?$": (
        "torch 2.13 has no CPU kernels for arithmetic or comparisons on uint16, uint32 and uint64"
    ),
    r"^test_cast_e8m0_FLOAT(16)?_to_FLOAT8E8M0$": (
        "casting to FLOAT8E8M0 is rejected: torch's conversion does not implement Cast's round_mode"
    ),
    r"^test_batchnorm_(example|epsilon)_training_mode$": (
        "training_mode=1 is rejected on purpose: components are lowered for inference (a ModelError says so)"
    ),
    r"^test_training_dropout(_default)?(_mask)?$": (
        "training-mode dropout with ratio > 0 draws a random mask; torch cannot reproduce numpy's generator"
    ),
    r"^test_dropout_(default|random)_old$": "opset 11 resolves Dropout to version 10, which predates the supported versions",
    r"^test_identity_(sequence|opt)$": "sequence and optional values are not tensors; only tensors are lowered",
    r"^test_attention_4d_causal_fp16_expanded$": (
        "float16 matmuls accumulate in float32 in torch; one output is 1 float16 ulp (relative 1.2e-3) "
        "from the reference's float16 result, above the case's rtol of 1e-3"
    ),
}

# Case counts under onnx 1.23.2, which constraints.txt pins. A new onnx release
# changes them, and test_conformance_counts then fails with the new numbers.
EXPECTED_SELECTED = 1104
EXPECTED_EXCLUDED_BY_TYPE = 74
EXPECTED_EXCLUDED_BY_NAME = 49


def _node_cases() -> list:
    with warnings.catch_warnings():
        # Generating the float8 and 4-bit cast cases overflows numpy casts on purpose.
        warnings.simplefilter("ignore", RuntimeWarning)
        return load_model_tests(kind="node")


def _supported(case) -> bool:
    return all(node.domain in ONNX_DOMAINS and lookup(node.op_type) is not None for node in case.model.graph.node)


def _excluded_type(case) -> int | None:
    graph = case.model.graph
    for value in (*graph.input, *graph.output):
        elem_type = value.type.tensor_type.elem_type if value.type.HasField("tensor_type") else None
        if elem_type in EXCLUDED_TYPES:
            return elem_type
    return None


def _excluded_pattern(name: str) -> str | None:
    return next((pattern for pattern in EXCLUDED_CASES if re.search(pattern, name)), None)


_CASES = {case.name: case for case in _node_cases() if _supported(case)}
_BY_TYPE = {name for name, case in _CASES.items() if _excluded_type(case) is not None}
_BY_NAME = {name for name in _CASES if name not in _BY_TYPE and _excluded_pattern(name)}
_RUN = set(_CASES) - _BY_TYPE - _BY_NAME


def _exclusion_reason(name: str) -> str | None:
    if name in _BY_TYPE:
        elem_type = _excluded_type(_CASES[name])
        return f"excluded, {TensorProto.DataType.Name(elem_type)}: {EXCLUDED_TYPES[elem_type]}"
    if name in _BY_NAME:
        return f"excluded: {EXCLUDED_CASES[_excluded_pattern(name)]}"
    return None


def _build_suite() -> type:
    suite = onnx.backend.test.BackendTest(LoweringBackend, __name__).test_cases["OnnxBackendNodeModelTest"]
    # BackendTest builds every node case, one test per device (test_abs_cpu,
    # test_abs_cuda). Keep those of supported ops, and the CUDA ones only when
    # a GPU is visible; skip the excluded ones.
    for attribute in list(vars(suite)):
        if not attribute.startswith("test_"):
            continue
        name, device = attribute.rsplit("_", 1)
        if name not in _CASES or (device == "cuda" and not torch.cuda.is_available()):
            delattr(suite, attribute)
        elif (reason := _exclusion_reason(name)) is not None:
            setattr(suite, attribute, unittest.skip(reason)(getattr(suite, attribute)))
    # One xdist worker runs them all, so the thousand small tests are not shipped one by one.
    suite.pytestmark = [pytest.mark.xdist_group("onnx_backend_conformance")]
    return suite


OnnxBackendNodeModelTest = _build_suite()


def _array(value):
    # The generated cases hold some tensors as TensorProto, as BackendTest's runner also expects.
    return onnx.numpy_helper.to_array(value) if isinstance(value, TensorProto) else value


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_cases_collected():
    cuda_tests = [attribute for attribute in vars(OnnxBackendNodeModelTest) if attribute.endswith("_cuda")]
    assert len(cuda_tests) == EXPECTED_SELECTED


def test_conformance_counts():
    assert len(_CASES) == EXPECTED_SELECTED
    assert len(_BY_TYPE) == EXPECTED_EXCLUDED_BY_TYPE
    assert len(_BY_NAME) == EXPECTED_EXCLUDED_BY_NAME
    assert len(_RUN) == EXPECTED_SELECTED - EXPECTED_EXCLUDED_BY_TYPE - EXPECTED_EXCLUDED_BY_NAME


def test_exclusions_match_cases():
    for pattern in EXCLUDED_CASES:
        assert any(re.search(pattern, name) for name in _CASES), f"stale exclusion {pattern}"
    used_types = {_excluded_type(_CASES[name]) for name in _BY_TYPE}
    assert used_types == set(EXCLUDED_TYPES)


def test_exclusions_still_fail():
    """Every excluded case fails when run, so the lists hold nothing that now passes."""
    passing = []
    for name in sorted(_BY_TYPE | _BY_NAME):
        case = _CASES[name]
        try:
            rep = LoweringBackend.prepare(case.model, "CPU")
            for inputs, expected in case.data_sets:
                outputs = rep.run([_array(value) for value in inputs])
                expected = [_array(value) for value in expected]
                Runner.assert_similar_outputs(expected, outputs, rtol=case.rtol, atol=case.atol)
        except Exception:  # noqa: BLE001 -- any failure is what this test expects
            continue
        passing.append(name)
    assert passing == []


@pytest.mark.parametrize("op_type", [spec.op_type for spec in supported_ops()])
def test_supported_op_has_cases(op_type):
    running = [name for name in _RUN if any(node.op_type == op_type for node in _CASES[name].model.graph.node)]
    assert running, f"no conformance case runs {op_type}"
