"""Property-based fuzz test of `akfc.compile` over random small sources and data tables with injected faults.

The property: a compile either succeeds, and then the written graph matches
the trained torch model within 1e-5, loads in onnxruntime and returns finite
outputs of the right shape, or it raises an `akfc.errors.AkfcError`. No other
exception type may escape. A fault that leaves nothing usable (see
`generators.MUST_FAIL`) must raise the error class listed there.

AKFC_FUZZ_EXAMPLES sets the number of examples (200 by default, `make fuzz`
runs 1000): half are clean cases, and each fault gets its own test with an
equal share of the other half. Run with `--hypothesis-show-statistics` to see
the count of each outcome per test; the terminal summary prints the totals.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from generators import FAULTS, MUST_FAIL, OUTCOMES, BuiltCase, Case, build_case, cases
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

import akfc
from akfc.errors import AkfcError
from akfc.pipeline import CompileResult

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("AKFC_FUZZ_EXAMPLES", "200"))
TOLERANCE = 1e-5  # max abs difference of the written graph from the trained torch model
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def _feeds(session: ort.InferenceSession, built: BuiltCase) -> dict[str, np.ndarray]:
    """Build the feeds from the valid table as a user would: each input from its column, in the declared type and rank."""
    assert built.valid_table is not None
    feeds = {}
    for value in session.get_inputs():
        column = built.valid_table.column(value.name).to_numpy(zero_copy_only=False).astype(_NUMPY_TYPES[value.type])
        feeds[value.name] = column.reshape(-1, *([1] * (len(value.shape) - 1)))
    return feeds


def _check_compiled(result: CompileResult, built: BuiltCase) -> None:
    """Check the written graph: parity with torch, loading in onnxruntime, finite outputs of the right shape."""
    assert set(result.parity) == set(built.kinds)
    for task, difference in result.parity.items():
        assert difference <= TOLERANCE, (task, difference)
    assert result.output.is_file()
    session = ort.InferenceSession(str(result.output), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(built.kinds)
    outputs = dict(zip(list(built.kinds), session.run(None, _feeds(session, built))))
    rows = built.valid_table.num_rows
    for task, (kind, classes) in built.kinds.items():
        values = outputs[task]
        assert values.shape == (rows, classes), (task, kind, values.shape)
        assert np.isfinite(values).all(), task
        expected = result.valid_predictions[task].reshape(values.shape)
        assert np.max(np.abs(values - expected)) <= TOLERANCE, task


def _compile(case: Case) -> AkfcError | None:
    """Compile one case and check the property; return the AkfcError it raised, if any."""
    fault = case.fault.kind
    event(f"fault: {fault}")
    with tempfile.TemporaryDirectory(prefix="akfc-fuzz-") as folder:
        built = build_case(case, Path(folder))
        try:
            result = akfc.compile(
                sources=built.sources, train=built.train, valid=built.valid, output=Path(folder) / "out" / "fused.onnx",
                device="cpu", **case.options,
            )  # fmt: skip
        except AkfcError as error:
            outcome = f"{type(error).__name__} on fault {fault}"
            OUTCOMES[outcome] += 1
            event(outcome)
            expected = MUST_FAIL.get(fault)
            assert expected in (None, type(error).__name__), f"fault {fault} raised {type(error).__name__}, expected {expected}: {error}"
            return error
        except Exception as error:
            OUTCOMES[f"{type(error).__name__} (not an AkfcError) on fault {fault}"] += 1
            raise
        OUTCOMES[f"compiled with fault {fault}"] += 1
        event(f"compiled with fault {fault}")
        assert fault not in MUST_FAIL, f"fault {fault} was accepted; expected a {MUST_FAIL[fault]}"
        _check_compiled(result, built)
        return None


# Shrinking is off: each shrink step that compiles costs seconds, so hypothesis would spend its five-minute
# shrink limit on every failure. The failing case is printed whole, and it is small already.
_SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@settings(_SETTINGS, max_examples=EXAMPLES // 2)
@given(case=cases("none"))
def test_compile_fuzz_clean(case: Case) -> None:
    _compile(case)


# The other half of the examples is shared by the faults, so that each fault gets its own test and examples.
@pytest.mark.parametrize("fault", FAULTS)
@settings(_SETTINGS, max_examples=math.ceil(EXAMPLES / 2 / len(FAULTS)))
@given(data=st.data())
def test_compile_fuzz_fault(fault: str, data: st.DataObject) -> None:
    _compile(data.draw(cases(fault), label="case"))
