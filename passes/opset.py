"""Bring every source to one opset of the default ONNX domain.

The common opset is the highest among the sources, and at least
``MIN_OPSET``. Models are only up-converted: onnx's version converter cannot
reliably go down (opset 20 to 17 fails on ReduceMean, whose axes moved from an
attribute to an input in opset 18).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence

import onnx
import onnx.version_converter

from akfc.errors import ModelError
from akfc.passes._checks import check_emitted

__all__ = ["MIN_OPSET", "convert_opset", "default_opset", "target_opset", "unify_opsets"]

logger = logging.getLogger(__name__)

MIN_OPSET = 17  # LayerNormalization is a primitive from 17 on; both torch exporters emit at least this
# e.g. "/project/onnx/version_converter/BaseConverter.h:66: adapter_lookup: Assertion `false` failed: "
_ASSERTION_PREFIX = re.compile(r"^\S+:\d+: \w+: Assertion `.*?` failed: ")


def default_opset(model: onnx.ModelProto) -> int | None:
    """Return the version of the default ("" or "ai.onnx") domain the model imports, or None."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def target_opset(models: Iterable[onnx.ModelProto]) -> int:
    """Return the common opset for a set of sources: the highest they import, at least ``MIN_OPSET``."""
    return max([MIN_OPSET, *(version for model in models if (version := default_opset(model)) is not None)])


def convert_opset(model: onnx.ModelProto, opset: int, *, origin: str = "model") -> onnx.ModelProto:
    """Return a copy of model at the given default-domain opset; other domains and the weights are untouched.

    Raises:
        ModelError: the model's opset is above ``opset`` (down-conversion is
            not supported), or the version converter fails. The message names
            both opsets and the op type that blocks the conversion.
    """
    current = default_opset(model)
    if current is not None and current > opset:
        raise ModelError(
            f"{origin}: opset {current} is above the target opset {opset}; akfc only converts up, "
            f"so re-export the model at opset {opset} or raise the target"
        )
    if current == opset:
        converted = onnx.ModelProto()
        converted.CopyFrom(model)
        return converted
    if current is None:
        # A graph of ai.onnx.ml ops only: there is nothing to convert, just declare the default domain.
        converted = onnx.ModelProto()
        converted.CopyFrom(model)
        converted.opset_import.append(onnx.helper.make_opsetid("", opset))
    else:
        converted = _convert(model, current, opset, origin)
    converted.ir_version = max(converted.ir_version, onnx.helper.find_min_ir_version_for(converted.opset_import, ignore_unknown=True))
    checked = check_emitted(converted, f"opset conversion of {origin} from {current} to {opset}")
    del checked.graph.value_info[:]
    logger.info("%s: converted from opset %s to %d", origin, current, opset)
    return checked


def unify_opsets(models: Sequence[onnx.ModelProto], origins: Sequence[str] | None = None) -> list[onnx.ModelProto]:
    """Return copies of the models, all at ``target_opset(models)``; ``origins`` name them in errors."""
    opset = target_opset(models)
    names = list(origins) if origins is not None else [f"source {index}" for index in range(len(models))]
    if len(names) != len(models):
        raise ValueError(f"got {len(names)} origins for {len(models)} models")
    return [convert_opset(model, opset, origin=name) for model, name in zip(models, names)]


def _convert(model: onnx.ModelProto, current: int, opset: int, origin: str) -> onnx.ModelProto:
    try:
        return onnx.version_converter.convert_version(model, opset)
    except Exception as error:  # noqa: BLE001 -- the converter raises bare RuntimeError/IndexError; rewrap with the blocking op
        failed_at, blocking = _find_blocking_step(model, current, opset)
        ops = ", ".join(blocking) or "an op whose schema changed"
        # The converter's C++ assertions start with a source location that means nothing to a user.
        reason = _ASSERTION_PREFIX.sub("", str(error))
        raise ModelError(
            f"{origin}: cannot convert from opset {current} to {opset}: the version converter fails at opset "
            f"{failed_at} on {ops} ({reason}); re-export the model at opset {opset}"
        ) from error


def _find_blocking_step(model: onnx.ModelProto, current: int, opset: int) -> tuple[int, list[str]]:
    """Convert one opset at a time to find the first failing step and the op types whose schema changes there."""
    step_model = model
    for version in range(current + 1, opset + 1):
        try:
            step_model = onnx.version_converter.convert_version(step_model, version)
        except Exception:  # noqa: BLE001 -- locating the failure is the point; the caller reports the original error
            return version, _ops_changed_at(step_model, version)
    return opset, _ops_changed_at(model, opset)


def _ops_changed_at(model: onnx.ModelProto, version: int) -> list[str]:
    changed = []
    for op_type in sorted({node.op_type for node in model.graph.node if node.domain in ("", "ai.onnx")}):
        try:
            schema = onnx.defs.get_schema(op_type, version)
        except onnx.defs.SchemaError:
            changed.append(f"{op_type} (no schema at opset {version})")
            continue
        if schema.since_version == version:
            changed.append(f"{op_type} (changed in opset {version})")
    return changed
