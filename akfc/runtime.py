"""onnxruntime sessions: provider choice and batched runs whose results may live in memory-mapped files."""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from akfc.errors import SpecError

__all__ = ["providers", "make_session", "run_batched"]

logger = logging.getLogger(__name__)

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def providers(device: str = "auto") -> list[str]:
    """Return the onnxruntime providers for a device: CUDA when asked for or available under "auto", else CPU."""
    available = ort.get_available_providers()
    if device == "cpu":
        return [_CPU]
    if device == "cuda":
        if _CUDA not in available:
            raise SpecError(
                "device 'cuda' was requested but this onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}); install akfc[gpu] or use --device cpu"
            )
        return [_CUDA, _CPU]
    if device != "auto":
        raise SpecError(f"device {device!r} is invalid; use auto, cpu or cuda")
    return [_CUDA, _CPU] if _CUDA in available else [_CPU]


def make_session(
    model: onnx.ModelProto | str | os.PathLike[str],
    device: str = "auto",
    *,
    optimize: bool = True,
    threads: int | None = None,
) -> ort.InferenceSession:
    """Create an inference session; `optimize=False` disables graph optimisations (bit-exact reference runs)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    if threads is not None:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=providers(device))


def run_batched(
    session: ort.InferenceSession,
    feeds: Mapping[str, np.ndarray],
    output_names: Sequence[str] | None = None,
    *,
    batch_size: int = 8192,
    memory_budget_bytes: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Run a session over all rows in batches and concatenate the outputs.

    Arguments:
        session: the session to run.
        feeds: input name -> array; every array has the same number of rows N.
        output_names: outputs to fetch; all of the session's outputs when None.
        batch_size: rows per run.
        memory_budget_bytes: when the outputs of all N rows would take more
            than this, they are written into memory-mapped files in
            `cache_dir` (which must then be given) instead of RAM.
        progress: called as progress(rows_done, rows_total).

    Returns:
        Output name -> array of N rows (a numpy.memmap when over budget).
    """
    names = list(output_names) if output_names is not None else [o.name for o in session.get_outputs()]
    rows = {len(v) for v in feeds.values()}
    if len(rows) != 1:
        raise ValueError(f"feeds have different row counts: {sorted(rows)}")
    (n,) = rows
    results: dict[str, np.ndarray] = {}
    for start in range(0, n, batch_size):
        batch = {name: values[start : start + batch_size] for name, values in feeds.items()}
        outputs = session.run(names, batch)
        for name, value in zip(names, outputs):
            value = _as_array(value)
            if name not in results:
                results[name] = _allocate(name, (n, *value.shape[1:]), value.dtype, n, memory_budget_bytes, cache_dir, len(names))
            results[name][start : start + len(value)] = value
        if progress is not None:
            progress(min(start + batch_size, n), n)
    return results


def _as_array(value: object) -> np.ndarray:
    """Return an output as an array; a ZipMap's sequence of {class: probability} maps becomes (N, classes) by sorted class."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        classes = sorted(value[0])
        return np.array([[row[c] for c in classes] for row in value], dtype=np.float32)
    return np.asarray(value)


def _allocate(
    name: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
    rows: int,
    budget: int | None,
    cache_dir: str | os.PathLike[str] | None,
    outputs: int,
) -> np.ndarray:
    size = math.prod(shape) * np.dtype(dtype).itemsize
    # NOTE: the budget is split evenly across outputs; a run with one huge and many tiny outputs maps early.
    if budget is None or size * outputs <= budget:
        return np.empty(shape, dtype=dtype)
    if cache_dir is None:
        raise ValueError(f"output {name!r} ({size} bytes for {rows} rows) exceeds the memory budget and no cache folder was given")
    fd, path = tempfile.mkstemp(prefix="stem-", suffix=".npy", dir=cache_dir)
    os.close(fd)
    logger.info("memory-mapping output %s (%d bytes) to %s", name, size, path)
    return np.lib.format.open_memmap(Path(path), mode="w+", dtype=dtype, shape=shape)
