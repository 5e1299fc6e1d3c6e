"""ONNX export of zoo models with either torch exporter, checked before writing.

Exporters:
    legacy  ``torch.onnx.export(..., dynamo=False)``: TorchScript tracing, opset 17
            unless ``opset`` is given.
    dynamo  ``torch.onnx.export(..., dynamo=True)``: torch.export plus onnxscript,
            at the exporter's default opset (20 in torch 2.13) unless ``opset`` is given.

The exported graph has one input per feature column, named exactly as the
column, of shape [batch] (int64 ids or float32 values), and one output named
by ``OUTPUT_NAMES`` of shape [batch, C]. Before a model is written it must pass
``onnx.checker`` (full check), the interface check above, and a check that no
Dropout or training-mode BatchNormalization node remains. Last comes the parity
check: onnxruntime and torch must agree within ``PARITY_TOLERANCE`` (max abs)
on every row of the check data.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from akfc.atomic import write_bytes_atomic
from models.zoo.architectures import ZooModel
from models.zoo.training import predict

__all__ = [
    "EXPORTERS",
    "LEGACY_OPSET",
    "OUTPUT_NAMES",
    "PARITY_TOLERANCE",
    "ExportCheckError",
    "ExportResult",
    "export_model",
    "opset_of",
]

logger = logging.getLogger(__name__)

EXPORTERS = ("legacy", "dynamo")
# Sources then come in two opsets (17 and the dynamo exporter's 20), as real model
# collections do; torch 2.13's TorchScript exporter would go up to 20.
LEGACY_OPSET = 17
PARITY_TOLERANCE = 1e-5
OUTPUT_NAMES = {"binary": "probability", "multiclass": "probabilities", "regression": "value"}
_BATCH = "batch"
# Rows of the example input that the exporters trace with; torch.export
# specialises a batch dimension of 0 or 1, so it must be larger.
_EXAMPLE_ROWS = 8


class ExportCheckError(RuntimeError):
    """An exported graph failed a check; nothing was written."""


@dataclass(frozen=True)
class ExportResult:
    """A checked ONNX file written by ``export_model``."""

    path: Path
    exporter: str
    opset: int  # version of the default ("ai.onnx") domain
    max_abs_diff: float  # onnxruntime against torch over the check rows
    rows_checked: int


def opset_of(model: onnx.ModelProto) -> int:
    """Return the opset version of the default ONNX domain."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ExportCheckError("the exported model imports no default-domain opset")


def _example_args(model: ZooModel, data: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.array(data[name][:_EXAMPLE_ROWS])) for name in model.features.names)


def _export_legacy(model: ZooModel, args: tuple[torch.Tensor, ...], output: str, opset: int) -> onnx.ModelProto:
    names = list(model.features.names)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # torch 2.9+ warns on every dynamo=False call that this exporter is the legacy one, and its internals
        # use deprecated typing helpers. Using this exporter is the point here.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            args,
            buffer,
            dynamo=False,
            input_names=names,
            output_names=[output],
            dynamic_axes={name: {0: _BATCH} for name in [*names, output]},
            opset_version=opset,
            do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


def _export_dynamo(model: ZooModel, args: tuple[torch.Tensor, ...], output: str, opset: int | None) -> onnx.ModelProto:
    batch = torch.export.Dim(_BATCH)
    # forward(*columns) takes one variadic argument, so the shapes are a tuple holding one tuple per column.
    dynamic_shapes = (tuple({0: batch} for _ in args),)
    with warnings.catch_warnings():
        # Both are harmless in torch 2.13: a deprecation inside torch's own pytree code, and a note that the
        # columns share one batch dimension (they do, by design).
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*LeafSpec")
        warnings.filterwarnings("ignore", category=UserWarning, message=r"# The axis name: batch will not be used")
        program = torch.onnx.export(
            model,
            args,
            dynamo=True,
            input_names=list(model.features.names),
            output_names=[output],
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            verbose=False,
        )
    return program.model_proto


def _check_interface(proto: onnx.ModelProto, model: ZooModel, output: str) -> None:
    """Raise unless the graph has the column inputs and the one task output of the zoo contract."""
    graph = proto.graph
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    names = [value.name for value in inputs]
    if names != list(model.features.names):
        raise ExportCheckError(f"graph inputs {names} differ from the feature columns {list(model.features.names)}")
    for value in inputs:
        expected = onnx.TensorProto.INT64 if value.name in model.features.vocab_sizes else onnx.TensorProto.FLOAT
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type != expected or len(tensor_type.shape.dim) != 1:
            raise ExportCheckError(
                f"graph input {value.name!r} is {onnx.helper.tensor_dtype_to_string(tensor_type.elem_type)} of rank "
                f"{len(tensor_type.shape.dim)}; expected {onnx.helper.tensor_dtype_to_string(expected)} of rank 1"
            )
        if not tensor_type.shape.dim[0].dim_param:
            raise ExportCheckError(f"graph input {value.name!r} has a fixed batch dimension; expected a dynamic one")
    outputs = [value.name for value in graph.output]
    if outputs != [output]:
        raise ExportCheckError(f"graph outputs {outputs} differ from the one task output [{output!r}]")


def _check_inference_graph(proto: onnx.ModelProto) -> None:
    """Raise if a Dropout node or a training-mode BatchNormalization node is left in the graph."""
    for node in proto.graph.node:
        if node.op_type == "Dropout":
            raise ExportCheckError(f"node {node.name!r} is a Dropout; export the model in eval mode")
        if node.op_type == "BatchNormalization":
            training = [attribute.i for attribute in node.attribute if attribute.name == "training_mode"]
            if training and training[0]:
                raise ExportCheckError(f"node {node.name!r} is a training-mode BatchNormalization; export in eval mode")


def _parity(proto: onnx.ModelProto, model: ZooModel, data: Mapping[str, np.ndarray]) -> tuple[float, int]:
    """Return the max abs difference between onnxruntime and torch over all rows of data, and the row count."""
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    # Copies: torch warns on read-only arrays, which is what pyarrow hands out.
    feeds = {name: np.array(data[name]) for name in model.features.names}
    (onnx_out,) = session.run(None, feeds)
    torch_out = predict(model, [torch.from_numpy(feeds[name]) for name in model.features.names])
    if onnx_out.shape != torch_out.shape:
        raise ExportCheckError(f"onnxruntime output shape {onnx_out.shape} differs from torch output shape {torch_out.shape}")
    return float(np.max(np.abs(onnx_out.astype(np.float64) - torch_out))), len(onnx_out)


def export_model(
    model: ZooModel,
    path: str | os.PathLike[str],
    exporter: str,
    check_data: Mapping[str, np.ndarray],
    opset: int | None = None,
) -> ExportResult:
    """Export a trained zoo model to ONNX, check it and write it atomically.

    Arguments:
        model: the trained model; it is put in eval mode.
        path: the .onnx file to write.
        exporter: "legacy" or "dynamo".
        check_data: rows for the parity check (one array per column), e.g. the
            whole test split; its first rows are also the example input.
        opset: opset version; default 17 for legacy, the exporter's default for dynamo.

    Returns:
        Where the file went, its opset and the measured parity.

    Raises:
        ExportCheckError: a check failed; no file is written.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose one of {EXPORTERS}")
    path = Path(path)
    model.eval()
    output = OUTPUT_NAMES[model.task.kind]
    args = _example_args(model, check_data)

    # 1. export
    if exporter == "legacy":
        proto = _export_legacy(model, args, output, LEGACY_OPSET if opset is None else opset)
    else:
        proto = _export_dynamo(model, args, output, opset)

    # 2. structural checks
    onnx.checker.check_model(proto, full_check=True)
    _check_interface(proto, model, output)
    _check_inference_graph(proto)

    # 3. numeric parity against torch
    max_abs_diff, rows = _parity(proto, model, check_data)
    if not max_abs_diff <= PARITY_TOLERANCE:
        raise ExportCheckError(
            f"{exporter} export of {model.architecture} for {path.name}: onnxruntime differs from torch by "
            f"{max_abs_diff:.3g} (max abs over {rows} rows), more than {PARITY_TOLERANCE:g}"
        )

    # 4. write
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, proto.SerializeToString())
    result = ExportResult(path=path, exporter=exporter, opset=opset_of(proto), max_abs_diff=max_abs_diff, rows_checked=rows)
    logger.info("wrote %s (%s exporter, opset %d, parity %.2g over %d rows)", path, exporter, result.opset, max_abs_diff, rows)
    return result
