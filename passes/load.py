"""Load and validate source models.

A loaded model has passed the full ONNX checker and strict shape inference, its
external data (if any) has been read from inside the model's own folder, and
its task output depends on at least one graph input.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from akfc.errors import ModelError
from akfc.passes._checks import infer_shapes_strict
from akfc.passes.dataflow import node_input_names
from akfc.passes.normalize import resolve_output

__all__ = ["load_model", "validate_model"]

logger = logging.getLogger(__name__)


def load_model(source: str | os.PathLike[str] | bytes, *, output: str | None = None) -> onnx.ModelProto:
    """Load an ONNX model from a file or from bytes and validate it.

    Arguments:
        source: path of an .onnx file, or the serialized model.
        output: the graph output that contains the task's prediction; by
            default the only one, or the only probability/score output (see
            ``akfc.passes.normalize.resolve_output``).

    Returns:
        The model, with any external data loaded into it.

    Raises:
        ModelError: the source is not ONNX, fails the checker or shape
            inference, reads external data from outside its folder, or its
            task output does not depend on any graph input.
    """
    if isinstance(source, bytes):
        origin = "model bytes"
        model = _parse(source, origin)
        _reject_external_data(model, origin)
    else:
        path = Path(source)
        origin = str(path)
        if not path.is_file():
            raise ModelError(f"{origin}: no such file; give the path of an .onnx model")
        model = _parse(path.read_bytes(), origin)
        _load_external_data(model, path.parent, origin)
    validate_model(model, output=output, origin=origin)
    logger.info("loaded %s: %d nodes, opset %s", origin, len(model.graph.node), _opset_text(model))
    return model


def validate_model(model: onnx.ModelProto, *, output: str | None = None, origin: str = "model") -> str:
    """Check a model: full checker, strict shape inference, and a path from a graph input to the task output.

    Returns the name of the task output. ``origin`` names the model in errors.
    """
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ModelError(f"{origin}: fails the ONNX checker: {error}") from error
    try:
        infer_shapes_strict(model)
    except onnx.shape_inference.InferenceError as error:
        raise ModelError(f"{origin}: fails strict ONNX shape inference: {error}") from error

    task_output = resolve_output(model, output, origin=origin)
    if not _depends_on_inputs(model.graph, task_output):
        raise ModelError(
            f"{origin}: output {task_output!r} does not depend on any graph input, so it is a constant; "
            "choose an output computed from the features"
        )
    return task_output


def _parse(data: bytes, origin: str) -> onnx.ModelProto:
    if not data:
        raise ModelError(f"{origin}: the file is empty (0 bytes); export or copy the model again")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as error:
        cut = _truncated_field(data)
        if cut is not None:
            raise ModelError(
                f"{origin}: the ONNX file is truncated: it ends inside field {cut[0]!r} of the model, which declares "
                f"{cut[1]} bytes when only {cut[2]} follow ({len(data)} bytes in all); copy or export the model again"
            ) from error
        raise ModelError(f"{origin}: not an ONNX model (protobuf decoding failed: {error})") from error
    # Arbitrary bytes can decode as an empty or unrelated protobuf message.
    if model.ir_version > 0 and not model.HasField("graph"):
        raise ModelError(
            f"{origin}: the ONNX model has an IR version but no graph ({len(data)} bytes), so the file may be truncated; "
            "copy or export the model again"
        )
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.output:
        raise ModelError(f"{origin}: not an ONNX model (no IR version, graph or graph output)")
    return model


def _read_varint(data: bytes, position: int) -> tuple[int, int] | None:
    """Decode a protobuf varint at `position`; return (value, next position), or None when the data ends inside it."""
    value, shift = 0, 0
    while position < len(data):
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position += 1
        if not byte & 0x80:
            return value, position
        shift += 7
    return None


def _truncated_field(data: bytes) -> tuple[str, int, int] | None:
    """Walk the top-level fields of a ModelProto; return (field, declared bytes, remaining bytes) when the data ends inside one.

    None when the top level is complete (the damage is further inside) or a
    field is not one of ModelProto's, so the bytes are likely not ONNX at all.
    """
    fields = onnx.ModelProto.DESCRIPTOR.fields_by_number
    position = 0
    while position < len(data):
        tag = _read_varint(data, position)
        if tag is None:
            return None
        key, position = tag
        field, wire_type = fields.get(key >> 3), key & 0x7
        if field is None:
            return None
        if wire_type == 0:
            value = _read_varint(data, position)
            if value is None:
                return field.name, 1, 0
            position = value[1]
        elif wire_type == 2:
            length = _read_varint(data, position)
            if length is None:
                return field.name, 1, 0
            size, position = length
            if position + size > len(data):
                return field.name, size, len(data) - position
            position += size
        else:
            return None  # ModelProto has no fixed-width or group fields
    return None


def _iter_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield attribute.sparse_tensor.values
                yield attribute.sparse_tensor.indices
            if attribute.HasField("g"):
                yield from _iter_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _iter_tensors(subgraph)


def _external_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    for tensor in _iter_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor
    for function in model.functions:
        for node in function.node:
            for attribute in node.attribute:
                if attribute.HasField("t") and attribute.t.data_location == onnx.TensorProto.EXTERNAL:
                    yield attribute.t


def _reject_external_data(model: onnx.ModelProto, origin: str) -> None:
    tensor = next(_external_tensors(model), None)
    if tensor is not None:
        raise ModelError(
            f"{origin}: tensor {tensor.name!r} is stored in an external data file, which cannot be resolved without "
            "the model's folder; load the model from its path instead"
        )


def _load_external_data(model: onnx.ModelProto, folder: Path, origin: str) -> None:
    """Read external tensor data, accepting only files inside the model's own folder."""
    base = folder.resolve()
    external = list(_external_tensors(model))
    for tensor in external:
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        if not location:
            raise ModelError(f"{origin}: tensor {tensor.name!r} is marked external but names no data file")
        target = (base / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(base):
            raise ModelError(
                f"{origin}: tensor {tensor.name!r} reads external data from {location!r}, outside the model's "
                f"folder {str(base)!r}; move the data file next to the model and store a relative location"
            )
        if not target.is_file():
            raise ModelError(f"{origin}: external data file {location!r} of tensor {tensor.name!r} not found in {str(base)!r}")
    if external:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(base))
        except (OSError, ValueError, onnx.checker.ValidationError) as error:
            raise ModelError(f"{origin}: could not read external data: {error}") from error
        logger.debug("%s: loaded %d external tensors", origin, len(external))


def _depends_on_inputs(graph: onnx.GraphProto, tensor: str) -> bool:
    initializers = {initializer.name for initializer in graph.initializer}
    inputs = {value.name for value in graph.input} - initializers
    producer = {name: node for node in graph.node for name in node.output if name}
    stack, seen = [tensor], set()
    while stack:
        name = stack.pop()
        if name in inputs:
            return True
        if name in seen or name not in producer:
            continue
        seen.add(name)
        stack.extend(node_input_names(producer[name]))
    return False


def _opset_text(model: onnx.ModelProto) -> str:
    return ", ".join(f"{entry.domain or 'ai.onnx'} {entry.version}" for entry in model.opset_import)
