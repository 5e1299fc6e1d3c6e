"""One `akfc.compile` in its own process, for benchmarks that measure its time and memory from outside.

Run (the benchmarks call it; by hand it is):
    python -m benchmarks.compile_worker JOB.json RESULT.json

JOB.json describes the compile: ``{"sources": [[task, path], ...], "train": ..., "valid": ...,
"test": ..., "output": ..., "options": {CompileSpec field: value}}``. RESULT.json gets the per-stage wall times
(``timings_s``), the report's per-split metrics, parameter counts and the stem outputs that went
to memory-mapped files.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import onnx

import akfc
from akfc.atomic import write_text_atomic
from akfc.spec import SourceSpec

__all__ = ["main", "onnx_parameter_count"]

_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def onnx_parameter_count(model: onnx.ModelProto) -> int:
    """Count the elements of a model's floating-point initializers: its parameters, frozen or trained."""
    total = 0
    for tensor in model.graph.initializer:
        if tensor.data_type in _FLOAT_TYPES:
            count = 1
            for dim in tensor.dims:
                count *= dim
            total += count
    return total


class _MemmapCounter(logging.Handler):
    """Collect akfc.runtime's "memory-mapping output" messages: the stem outputs cached on disk."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.outputs: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("memory-mapping output"):
            self.outputs.append(str(record.args[0]))


def main(argv: list[str] | None = None) -> int:
    job_path, result_path = (argv if argv is not None else sys.argv[1:])[:2]
    job = json.loads(Path(job_path).read_text())
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    pipeline_logger = logging.getLogger("akfc.pipeline")
    pipeline_logger.setLevel(logging.INFO)
    # Stage times and parity lines are progress; the multi-line decomposition dumps are not.
    pipeline_logger.addFilter(lambda record: "\n" not in record.getMessage())
    runtime_logger = logging.getLogger("akfc.runtime")
    runtime_logger.setLevel(logging.INFO)
    memmaps = _MemmapCounter()
    runtime_logger.addHandler(memmaps)
    # The torch exporter logs one warning per torchvision operator it cannot register, and onnxscript's
    # optimizer logs one per Split it does not fold. Neither concerns the measurement.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    logging.getLogger("onnxscript").setLevel(logging.ERROR)

    def on_epoch(summary: object, line: str) -> None:
        print(f"  {line}", flush=True)

    def progress(done: int, total: int) -> None:
        # One line per tenth of an epoch: enough to see a long epoch move, few enough for a log.
        if done == total or done * 10 // total != (done - 1) * 10 // total:
            print(f"  training: {done}/{total} batches", flush=True)

    started = time.perf_counter()
    result = akfc.compile(
        sources=[SourceSpec(task, Path(path)) for task, path in job["sources"]],
        train=job["train"],
        valid=job["valid"],
        test=job.get("test"),
        output=job["output"],
        force=True,
        on_epoch=on_epoch,
        progress=progress,
        **job.get("options", {}),
    )
    wall = time.perf_counter() - started
    fused = onnx.load(str(result.output))
    akf_parameters = sum(p.numel() for p in result.model.akf_parameters())
    content = {
        "wall_s": wall,
        "timings_s": result.report["timings_s"],
        "splits": result.report["splits"],
        "best_epoch": result.training.best_epoch,
        "epochs_run": len(result.training.history),
        # The sources' parameters plus the fusion layers': what the fused model computes with. The written
        # graph's initializers can count fewer after its optimisations, so they are listed apart.
        "parameters": sum(onnx_parameter_count(onnx.load(path)) for _, path in job["sources"]) + akf_parameters,
        "trainable_parameters": akf_parameters,
        "graph_initializer_parameters": onnx_parameter_count(fused),
        "memmapped_outputs": memmaps.outputs,
        "output": str(result.output),
    }
    write_text_atomic(result_path, json.dumps(content, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
