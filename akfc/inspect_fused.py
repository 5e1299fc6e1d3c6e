"""Inspection of a fused graph: its components by namespace, its sources and its metadata.

A fused graph is not decomposed again: recompilation already names every node
`<source>/<component>/...` or `akf/<part>/...`, so the components are read
back from the node names.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import onnx
from rich.table import Table

from akfc.serving import FusedMetadata, read_metadata

__all__ = ["FusedComponent", "fused_components", "fused_summary", "fused_table", "fused_to_dict", "is_fused"]


@dataclass
class FusedComponent:
    """The nodes of one namespace of a fused graph."""

    owner: str  # a source id, or "akf" for the fusion layers
    name: str  # "stem", "level<k>", "head", "shared" (shape computations), "bind" (input adapters), "mixture"
    nodes: int = 0
    params: int = 0  # elements of the floating-point initializers its nodes read
    ops: Counter = field(default_factory=Counter)


def is_fused(model: onnx.ModelProto) -> bool:
    """Return whether the model carries akfc's fused-graph metadata."""
    return any(prop.key == "akfc.schema_version" for prop in model.metadata_props)


def _order(component: FusedComponent) -> tuple[int, str, int]:
    rank = {"guard": 0, "bind": 0, "shared": 1, "stem": 2, "head": 1000, "mixture": 1001}
    level = int(component.name[5:]) * 2 + 3 if component.name.startswith("level") else rank.get(component.name, 999)
    # Interleave: level k of the sources, then level k of akf.
    return (level + (1 if component.owner == "akf" else 0), component.owner, 0)


def fused_components(model: onnx.ModelProto) -> list[FusedComponent]:
    """Group the nodes of a fused graph by their `<owner>/<component>/` namespace."""
    float_sizes = {
        init.name: math.prod(init.dims)
        for init in model.graph.initializer
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    }
    components: dict[tuple[str, str], FusedComponent] = {}
    counted: dict[tuple[str, str], set[str]] = {}
    for node in model.graph.node:
        parts = node.name.split("/")
        key = (parts[0], parts[1]) if len(parts) > 2 else (parts[0], "other")
        component = components.setdefault(key, FusedComponent(*key))
        component.nodes += 1
        component.ops[node.op_type] += 1
        seen = counted.setdefault(key, set())
        for name in node.input:
            if name in float_sizes and name not in seen:
                seen.add(name)
                component.params += float_sizes[name]
    return sorted(components.values(), key=_order)


def fused_table(model: onnx.ModelProto, title: str) -> Table:
    """Build the rich table of a fused graph's components."""
    table = Table(title=title)
    for column, justify in (("owner", "left"), ("component", "left"), ("nodes", "right"), ("params", "right"), ("ops", "left")):
        table.add_column(column, justify=justify)
    for component in fused_components(model):
        ops = ", ".join(f"{op} x{count}" for op, count in component.ops.most_common(4))
        more = len(component.ops) - 4
        table.add_row(component.owner, component.name, str(component.nodes), f"{component.params:,}", ops + (f", +{more} more" if more > 0 else ""))
    return table


def fused_summary(metadata: FusedMetadata, model: onnx.ModelProto) -> list[str]:
    """Return printable lines about the tasks, the sources and the recorded metrics."""
    lines = [f"fused by akfc {metadata.version}: {len(metadata.sources)} sources, {metadata.levels} levels, fusion {metadata.fusion}"]
    inputs = [value.name for value in model.graph.input if value.name not in {i.name for i in model.graph.initializer}]
    lines.append(f"inputs ({len(inputs)}): {', '.join(inputs)}")
    for task, info in metadata.tasks.items():
        sources = [s.name for s in metadata.sources if s.task == task]
        metrics = metadata.metrics.get("test", metadata.metrics.get("valid", {})).get(task, {})
        shown = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())
        lines.append(f"task {task} ({info['kind']}, output {info['output']!r}, label {info['label']!r}): sources {', '.join(sources)}; {shown}")
    for source in metadata.sources:
        lines.append(f"source {source.name}: {source.file} sha256 {source.sha256[:12]}..., output {source.output!r}")
    return lines


def fused_to_dict(model: onnx.ModelProto, file: str) -> dict[str, Any]:
    """Return the JSON form: the metadata plus one entry per component."""
    metadata = read_metadata(model, file)
    return {
        "model": {
            "path": file,
            "fused": True,
            "tasks": metadata.tasks,
            "levels": metadata.levels,
            "fusion": metadata.fusion,
            "sources": [vars(source) for source in metadata.sources],
            "metrics": metadata.metrics,
            "metadata": {prop.key: prop.value for prop in model.metadata_props},
        },
        "components": [
            {"owner": c.owner, "name": c.name, "nodes": c.nodes, "params": c.params, "ops": dict(c.ops)}
            for c in fused_components(model)
        ],
    }
