"""Fixtures for fusing sources from other tools: compile a list of sources and compute the sources' own mixture."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pytest

__all__: list[str] = []

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def _source_feeds(session, inputs: dict[str, str | list[str]], table: pa.Table) -> dict[str, np.ndarray]:
    """Build a source's feeds from the data table as its own user would: each bound column cast and shaped to the input."""
    feeds = {}
    for value in session.get_inputs():
        binding = inputs.get(value.name, value.name)
        dtype = _ORT_TYPES[value.type]
        if isinstance(binding, list):
            feeds[value.name] = np.stack([table.column(c).to_numpy() for c in binding], axis=1).astype(dtype)
            continue
        column = table.column(binding).to_numpy().astype(dtype)
        feeds[value.name] = column.reshape(-1, 1) if len(value.shape) == 2 else column
    return feeds


def _source_output(session, output: str | None) -> str:
    names = [value.name for value in session.get_outputs()]
    if output is None:
        assert len(names) == 1, names
        return names[0]
    return output if output in names else f"{output}:0"


@pytest.fixture
def sources_mean(adult_dir: Path) -> Callable[..., dict[str, np.ndarray]]:
    """Return a function: (source specs, split) -> {task: uniform mixture of the sources' outputs}, each source run whole in onnxruntime."""
    from akfc.data import read_table
    from akfc.runtime import make_session, run_batched

    def mean(specs: Sequence, split: str = "valid") -> dict[str, np.ndarray]:
        table = read_table(adult_dir / f"{split}.parquet")
        per_task: dict[str, list[np.ndarray]] = {}
        for spec in specs:
            session = make_session(str(spec.path), "cpu", optimize=False)
            output = _source_output(session, spec.output)
            predictions = run_batched(session, _source_feeds(session, spec.inputs, table))[output]
            per_task.setdefault(spec.task, []).append(predictions.reshape(-1))
        return {task: np.mean(outputs, axis=0) for task, outputs in per_task.items()}

    return mean


@pytest.fixture
def fused_outputs(adult_dir: Path) -> Callable[..., dict[str, np.ndarray]]:
    """Return a function: (fused ONNX file, split) -> {task: fused output}, fed from the data table by column name."""
    from akfc.data import read_table
    from akfc.runtime import make_session, run_batched

    def run(path: Path, split: str = "valid") -> dict[str, np.ndarray]:
        table = read_table(adult_dir / f"{split}.parquet")
        session = make_session(onnx.load(str(path)), "cpu")
        feeds = {value.name: table.column(value.name).to_numpy().astype(_ORT_TYPES[value.type]) for value in session.get_inputs()}
        return {name: values.reshape(-1) for name, values in run_batched(session, feeds).items()}

    return run


@pytest.fixture
def fuse(adult_dir: Path) -> Callable[..., object]:
    """Return a function: (source specs, output file, **options) -> akfc.pipeline.compile's result on the Adult splits."""
    from akfc.pipeline import compile
    from akfc.spec import CompileSpec

    def run(specs: Sequence, output: Path, **options) -> object:
        spec = CompileSpec(
            sources=list(specs), tasks={}, train=adult_dir / "train.parquet", valid=adult_dir / "valid.parquet",
            test=adult_dir / "test.parquet", output=output, **options,
        )  # fmt: skip
        return compile(spec.validate())

    return run


@pytest.fixture(scope="session")
def sklearn_trees(adult_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Sources from skl2onnx and onnxmltools, as BuiltSource: sklearn income with and without ZipMap, sklearn marital, LightGBM income."""
    from models.external.sklearn_source import build_sklearn_source
    from models.external.trees_source import build_lightgbm_source

    folder = tmp_path_factory.mktemp("sklearn_trees")
    return {
        "sklearn_income": build_sklearn_source(adult_dir, folder / "income_sklearn.onnx"),
        "sklearn_income_tensor": build_sklearn_source(adult_dir, folder / "income_sklearn_tensor.onnx", zipmap=False, seed=1),
        "sklearn_marital": build_sklearn_source(adult_dir, folder / "marital_sklearn.onnx", task="marital", zipmap=False),
        "lightgbm_income": build_lightgbm_source(adult_dir, folder / "income_lightgbm.onnx"),
    }


@pytest.fixture
def frozen_bytes_match() -> Callable[..., int]:
    """Return a function: (fused ONNX file, prepared sources) -> how many initializers were compared; asserts each is byte-identical."""

    def check(path: Path, sources: Sequence) -> int:
        fused = {init.name: init.SerializeToString() for init in onnx.load(str(path)).graph.initializer}
        compared = 0
        for source in sources:
            for init in source.normalized.model.graph.initializer:
                if init.name in fused:
                    assert fused[init.name] == init.SerializeToString(), init.name
                    compared += 1
        return compared

    return check
