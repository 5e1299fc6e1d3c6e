"""The table of ONNX ops the torch lowering supports, by op type and schema version.

An ONNX model imports an opset, say 17. Each op in it then has the newest
schema version not above that opset (Softmax-13 under opset 17). The table
lists, for each op type, the schema versions its lowering implements. A model
is lowered only when every node resolves to a listed version. So when a future
onnx release changes an op's semantics under a new version, models that use
it are rejected until the table lists that version.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx

if TYPE_CHECKING:
    from akfc.lower.codegen import NodeContext
    from akfc.lower.values import Value

__all__ = [
    "ONNX_DOMAINS",
    "OpSpec",
    "register",
    "supported_ops",
    "lookup",
    "schema_versions",
    "supported_opsets",
]

# The default ONNX operator set goes by either name in `NodeProto.domain`.
ONNX_DOMAINS = ("", "ai.onnx")

LowerFn = Callable[["NodeContext"], "Sequence[Value | None]"]


@dataclass(frozen=True)
class OpSpec:
    """One supported op type: its schema versions and the function that lowers it."""

    op_type: str
    versions: tuple[int, ...]
    lower: LowerFn
    # What the lowering rejects or leaves out (attribute values, element types).
    limits: str = ""


_REGISTRY: dict[str, OpSpec] = {}


def register(op_type: str, versions: Sequence[int], limits: str = "") -> Callable[[LowerFn], LowerFn]:
    """Register a lowering function for `op_type` at the given schema versions."""

    def decorate(lower: LowerFn) -> LowerFn:
        if op_type in _REGISTRY:
            raise RuntimeError(f"op type {op_type} is registered twice")
        _REGISTRY[op_type] = OpSpec(op_type, tuple(sorted(versions)), lower, limits)
        return lower

    return decorate


def supported_ops() -> list[OpSpec]:
    """Return every supported op, sorted by op type."""
    _load_op_modules()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def lookup(op_type: str) -> OpSpec | None:
    """Return the entry for an op type of the default ONNX domain, or None."""
    _load_op_modules()
    return _REGISTRY.get(op_type)


def schema_versions(op_type: str) -> tuple[int, ...]:
    """Return every schema version that the installed onnx defines for a default-domain op."""
    return _schema_history().get(op_type, ())


@functools.cache
def _schema_history() -> dict[str, tuple[int, ...]]:
    history: dict[str, list[int]] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain == "":
            history.setdefault(schema.name, []).append(schema.since_version)
    return {name: tuple(sorted(versions)) for name, versions in history.items()}


def supported_opsets(spec: OpSpec) -> list[tuple[int, int]]:
    """Return the model opset ranges (inclusive) under which the op resolves to a supported version."""
    latest = onnx.defs.onnx_opset_version()
    known = schema_versions(spec.op_type)
    ranges: list[tuple[int, int]] = []
    for index, version in enumerate(known):
        if version not in spec.versions:
            continue
        end = known[index + 1] - 1 if index + 1 < len(known) else latest
        if ranges and ranges[-1][1] == version - 1:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((version, end))
    return ranges


@functools.cache
def _load_op_modules() -> None:
    # The op modules register themselves on import.
    import akfc.lower.ops  # noqa: F401 -- imported for its registrations
