"""Post-conditions every pass checks on the models it emits."""

from __future__ import annotations

import logging

import onnx

from akfc.errors import ModelError

__all__ = ["check_emitted", "infer_shapes_strict"]

logger = logging.getLogger(__name__)


def infer_shapes_strict(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of model with value_info from strict, type-checked shape inference with data propagation."""
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)


def check_emitted(model: onnx.ModelProto, context: str) -> onnx.ModelProto:
    """Run the full ONNX checker and strict shape inference on a model a pass built.

    Returns a copy with inferred value_info; the model itself is not modified.
    A failure here means a pass built an invalid graph, so the error names the
    pass and the model (``context``).
    """
    # NOTE: both checks take the in-memory proto, so a model over protobuf's 2 GiB limit fails here;
    # checking such a model would need it saved with external data and checked by path.
    try:
        onnx.checker.check_model(model, full_check=True)
        return infer_shapes_strict(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ModelError(f"{context} produced an invalid ONNX model: {error}") from error
