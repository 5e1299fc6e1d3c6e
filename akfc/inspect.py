"""Inspect how a model decomposes: a summary, a component table, a JSON document and a picture.

``inspect_model`` runs the graph passes on one ONNX file (load, opset, normalise,
decompose) without renaming anything. ``to_dict`` gives the JSON document of
``akfc inspect --json``, ``component_table`` the rich table, and ``draw`` the
picture: each component a coloured band, frontier tensors highlighted.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from rich.table import Table
from rich.text import Text

from akfc.atomic import write_atomic
from akfc.errors import ModelError
from akfc.passes.dataflow import INPUT, Dataflow
from akfc.passes.decompose import DEFAULT_LEVELS, Component, Decomposition, TensorSpec, decompose
from akfc.passes.load import load_model
from akfc.passes.normalize import NormalizedSource, normalize
from akfc.passes.opset import convert_opset, default_opset, target_opset

__all__ = ["Inspection", "component_table", "draw", "inspect_model", "summary_line", "to_dict"]

logger = logging.getLogger(__name__)

# Ops that only move or retype elements; the picture hides them and joins their edges.
_HIDDEN_OPS = frozenset({"Cast", "Dropout", "Expand", "Flatten", "Identity", "Reshape", "Squeeze", "Transpose", "Unsqueeze"})
_COLORS = {"stem": "#d6e6f5", "head": "#f6d5d0"}
_BLOCK_COLORS = ("#dcefd6", "#f7ecc9", "#e6dcf0", "#d3efec")
_FRONTIER_COLOR = "#e0731b"
_MAX_LISTED_TENSORS = 6  # table cells list this many tensors, then a count of the rest


@dataclass(frozen=True, eq=False)
class Inspection:
    """A model run through the graph passes, ready to be printed or drawn."""

    path: Path
    source_opset: int | None  # default-domain opset of the file
    source: NormalizedSource
    decomposition: Decomposition

    @property
    def model(self) -> onnx.ModelProto:
        return self.source.model


def inspect_model(
    path: str | os.PathLike[str],
    *,
    levels: int = DEFAULT_LEVELS,
    output: str | None = None,
    kind: str | None = None,
    frontiers: Mapping[int, Sequence[str]] | None = None,
) -> Inspection:
    """Load, normalise and decompose one ONNX file; names stay as in the file."""
    path = Path(path)
    loaded = load_model(path, output=output)
    source_opset = default_opset(loaded)
    converted = convert_opset(loaded, target_opset([loaded]), origin=str(path))
    source = normalize(converted, None, output=output, kind=kind, origin=str(path))
    decomposition = decompose(source.model, levels=levels, frontiers=frontiers)
    return Inspection(path=path, source_opset=source_opset, source=source, decomposition=decomposition)


# -- text and JSON -----------------------------------------------------------------------------------


def _tensor_dict(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "dtype": spec.dtype, "shape": list(spec.shape), "width": spec.width if spec.shape else None}


def _component_dict(component: Component) -> dict[str, Any]:
    return {
        "name": component.name,
        "kind": component.kind,
        "level": component.level,
        "identity": component.identity,
        "nodes": len(component.nodes),
        "ops": dict(component.ops),
        "params": component.params,
        "flops": component.flops,
        "inputs": [_tensor_dict(spec) for spec in component.inputs],
        "outputs": [_tensor_dict(spec) for spec in component.outputs],
    }


def _producer(model: onnx.ModelProto) -> str:
    return " ".join(part for part in (model.producer_name, model.producer_version) if part) or "unknown"


def to_dict(inspection: Inspection) -> dict[str, Any]:
    """Return the JSON document of ``akfc inspect --json``; its keys are documented in the README."""
    source, decomposition, model = inspection.source, inspection.decomposition, inspection.model
    return {
        "model": {
            "path": str(inspection.path),
            "producer": _producer(model),
            "ir_version": model.ir_version,
            "source_opset": inspection.source_opset,
            "opset": default_opset(model),
            "inputs": [_tensor_dict(spec) for spec in decomposition.stem.inputs],
            "output": source.output,
            "logit": source.logit,
            "activation": source.activation,
            "kind": source.kind,
            "inferred_kind": source.inferred_kind,
            "levels": decomposition.levels,
            "params": decomposition.params,
            "flops": decomposition.flops,
            "metadata": {entry.key: entry.value for entry in model.metadata_props},
        },
        "components": [_component_dict(component) for component in decomposition.components],
        "frontiers": [
            {"index": index, "fraction": round(frontier.fraction, 4), "width": frontier.width, "tensors": list(frontier.names)}
            for index, frontier in enumerate(decomposition.frontiers)
        ],
    }


def summary_line(inspection: Inspection) -> str:
    """Return the one-line summary printed under the table."""
    source, model = inspection.source, inspection.model
    opset = default_opset(model)
    opset_text = f"opset {opset}" if inspection.source_opset == opset else f"opset {inspection.source_opset} -> {opset}"
    activation = source.activation or "no activation"
    kind = source.kind if source.kind == source.inferred_kind else f"{source.kind} (given; inferred {source.inferred_kind})"
    return (
        f"{inspection.path.name}: {opset_text}, producer {_producer(model)}; task output {source.output} "
        f"({activation}, logit {source.logit}); kind {kind}; {inspection.decomposition.levels} levels"
    )


def _human(count: int) -> str:
    for factor, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if count >= factor:
            return f"{count / factor:.1f}{suffix}"
    return str(count)


def _tensor_text(spec: TensorSpec) -> str:
    dims = ", ".join(str(dim) for dim in spec.shape)
    dtype = "" if spec.dtype == "float" else f" {spec.dtype}"
    return f"{spec.name}{dtype} [{dims}]"


def _tensor_lines(specs: Sequence[TensorSpec]) -> str:
    lines = [_tensor_text(spec) for spec in specs[:_MAX_LISTED_TENSORS]]
    if len(specs) > _MAX_LISTED_TENSORS:
        rest = specs[_MAX_LISTED_TENSORS:]
        lines.append(f"... and {len(rest)} more")
    return "\n".join(lines)


def component_table(inspection: Inspection) -> Table:
    """Return a rich table with one row per component."""
    table = Table(title=f"{inspection.path.name}: components", show_lines=True)
    table.add_column("component")
    table.add_column("level", justify="right")
    table.add_column("ops", no_wrap=True)
    table.add_column("params", justify="right")
    table.add_column("FLOPs/row", justify="right")
    table.add_column("inputs", overflow="fold")
    table.add_column("outputs", overflow="fold")
    for component in inspection.decomposition.components:
        ops = "identity" if component.identity else "\n".join(f"{op} x{count}" for op, count in component.ops.items())
        # Text cells: rich would read "[batch, 62]" as markup.
        table.add_row(
            Text(component.name),
            Text(str(component.level)),
            Text(ops),
            Text(_human(component.params)),
            Text(_human(component.flops)),
            Text(_tensor_lines(component.inputs)),
            Text(_tensor_lines(component.outputs)),
        )
    return table


# -- picture -----------------------------------------------------------------------------------------


@dataclass
class _Picture:
    """Layout of the drawn graph: node positions, edges, and the column span of each component."""

    labels: dict[str, str]  # node id -> text
    kinds: dict[str, str]  # node id -> "input", "layer" or "op"
    positions: dict[str, tuple[float, float]]
    edges: list[tuple[str, str, str | None]]  # (from, to, frontier tensor crossed or None)
    spans: list[tuple[float, float]]  # per component: first and last column
    height: float


def _short(name: str, limit: int = 26) -> str:
    return name if len(name) <= limit else "..." + name[-(limit - 3) :]


def _graph_elements(decomposition: Decomposition) -> tuple[dict[str, str], dict[str, str], dict[str, int], list[tuple[str, str, str | None]]]:
    """Return the drawn nodes (labels, kinds, owning component) and edges; reshape-like nodes are joined over."""
    flow: Dataflow = decomposition.dataflow
    index_of = {node.name: index for index, node in enumerate(flow.nodes)}
    component_of: dict[int, int] = {}
    for position, component in enumerate(decomposition.components):
        for name in component.nodes:
            component_of[index_of[name]] = position
    hidden = {index for index in component_of if flow.nodes[index].op_type in _HIDDEN_OPS}

    def producer_component(tensor: str) -> int:
        producer = flow.producer.get(tensor)
        return component_of.get(producer, 0) if producer is not None else 0

    def sources(tensor: str, target: int) -> list[tuple[str, str | None]]:
        """Walk back over hidden nodes to the visible producers of tensor; note the frontier tensor crossed."""
        found: list[tuple[str, str | None]] = []
        stack: list[tuple[str, str | None]] = [(tensor, None)]
        while stack:
            name, crossed = stack.pop()
            if crossed is None and producer_component(name) != target:
                crossed = name
            producer = flow.producer.get(name)
            if producer is None:
                found.append((f"input:{name}", crossed))
            elif producer in hidden:
                stack.extend((inner, crossed) for inner in flow.data_inputs(producer))
            elif producer in component_of:
                found.append((f"node:{producer}", crossed))
        return found

    labels: dict[str, str] = {}
    kinds: dict[str, str] = {}
    owner: dict[str, int] = {}
    for name in flow.inputs:
        if flow.tensor_class.get(name) == INPUT:
            labels[f"input:{name}"], kinds[f"input:{name}"], owner[f"input:{name}"] = _short(name, 18), "input", 0
    for index, position in sorted(component_of.items()):
        if index not in hidden:
            node_id = f"node:{index}"
            labels[node_id] = flow.nodes[index].op_type
            kinds[node_id] = "layer" if flow.is_layer(index) else "op"
            owner[node_id] = position

    edges: list[tuple[str, str, str | None]] = []
    for node_id in [key for key in labels if key.startswith("node:")]:
        index = int(node_id.split(":")[1])
        for tensor in flow.data_inputs(index):
            for start, crossed in sources(tensor, owner[node_id]):
                if start in labels and (start, node_id, crossed) not in edges:
                    edges.append((start, node_id, crossed))
    for output in decomposition.outputs:
        output_id = f"output:{output}"
        labels[output_id], kinds[output_id], owner[output_id] = _short(output, 18), "input", len(decomposition.components) - 1
        for start, crossed in sources(output, owner[output_id]):
            if start in labels:
                edges.append((start, output_id, crossed))
    return labels, kinds, owner, edges


def _columns(labels: Mapping[str, str], owner: Mapping[str, int], preds: Mapping[str, list[str]], components: int) -> tuple[dict[str, float], list[tuple[float, float]]]:
    """Give each component a band of columns; inside it, a node's column is its longest-path depth."""
    depth: dict[str, int] = {}
    for key in labels:  # labels are in graph order, so predecessors come first
        inside = [depth[pred] + 1 for pred in preds[key] if pred in depth and owner[pred] == owner[key]]
        depth[key] = max(inside, default=0)
    spans: list[tuple[float, float]] = []
    column: dict[str, float] = {}
    offset = 0.0
    for position in range(components):
        members = [key for key in labels if owner[key] == position]
        width = max((depth[key] for key in members), default=0) + 1
        spans.append((offset, offset + width - 1))
        for key in members:
            column[key] = offset + depth[key]
        offset += width + 1
    return column, spans


def _rows(labels: Mapping[str, str], column: Mapping[str, float], preds: Mapping[str, list[str]]) -> tuple[dict[str, float], int]:
    """Order each column by the mean row of its predecessors (one barycentre sweep); return rows and the tallest column."""
    rows: dict[str, float] = {}
    by_column: dict[float, list[str]] = {}
    for key in labels:
        by_column.setdefault(column[key], []).append(key)
    for x in sorted(by_column):
        keys = by_column[x]
        order = {}
        for position, key in enumerate(keys):
            placed = [rows[pred] for pred in preds[key] if pred in rows]
            order[key] = sum(placed) / len(placed) if placed else position - (len(keys) - 1) / 2
        keys.sort(key=lambda key: order[key])
        for rank, key in enumerate(keys):
            rows[key] = rank - (len(keys) - 1) / 2
    return rows, max((len(keys) for keys in by_column.values()), default=1)


def _layout(decomposition: Decomposition) -> _Picture:
    labels, kinds, owner, edges = _graph_elements(decomposition)
    preds: dict[str, list[str]] = {key: [] for key in labels}
    for start, end, _ in edges:
        preds[end].append(start)
    column, spans = _columns(labels, owner, preds, len(decomposition.components))
    rows, height = _rows(labels, column, preds)
    positions = {key: (column[key], -rows[key]) for key in labels}
    return _Picture(labels, kinds, positions, edges, spans, height)


def draw(inspection: Inspection, path: str | os.PathLike[str]) -> Path:
    """Draw the decomposed graph to an .svg or .png file; return the path written.

    Uses graphviz ``dot`` when it is installed, else matplotlib with a layered
    layout. Either way each component is a labelled, coloured cluster, and the
    edges that cross a frontier are highlighted.
    """
    target = Path(path)
    fmt = target.suffix.lower().lstrip(".")
    if fmt not in ("svg", "png"):
        raise ModelError(f"cannot draw to {target}: the picture format must be .svg or .png")
    picture = _layout(inspection.decomposition)
    if shutil.which("dot"):
        _draw_with_graphviz(inspection, picture, target, fmt)
    else:
        _draw_with_matplotlib(inspection, picture, target, fmt)
    logger.info("drew %s", target)
    return target


def _band_title(component: Component) -> str:
    title = component.name if component.kind != "block" else f"block {component.level}"
    if component.identity:
        return f"{title}\nidentity"
    return f"{title}\n{_human(component.flops)} FLOPs\n{_human(component.params)} params"


def _frontier_text(index: int, decomposition: Decomposition) -> str:
    frontier = decomposition.frontiers[index]
    lines = [f"frontier {index}: width {frontier.width}"]
    lines += [f"{_short(spec.name)} [{', '.join(str(dim) for dim in spec.shape[1:])}]" for spec in frontier.tensors[:8]]
    if len(frontier.tensors) > 8:
        lines.append(f"... and {len(frontier.tensors) - 8} more")
    return "\n".join(lines)


def _band_color(component: Component) -> str:
    return _COLORS.get(component.kind) or _BLOCK_COLORS[(component.level - 1) % len(_BLOCK_COLORS)]


def _draw_with_matplotlib(inspection: Inspection, picture: _Picture, target: Path, fmt: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx
    from matplotlib.patches import FancyBboxPatch

    decomposition = inspection.decomposition
    columns = picture.spans[-1][1] + 1
    # Inches per column and per row: wide graphs get narrower columns so the whole picture stays readable.
    dx = min(1.1, max(0.62, 24.0 / columns))
    dy = 0.42
    width = max(8.0, columns * dx + 1.0)
    height = max(5.5, picture.height * dy + 3.2)
    figure, axes = plt.subplots(figsize=(width, height))
    top = picture.height / 2 + 0.9
    bottom = -picture.height / 2 - 0.6

    # component bands and their titles
    for component, (first, last) in zip(decomposition.components, picture.spans):
        axes.add_patch(
            FancyBboxPatch(
                (first - 0.45, bottom), last - first + 0.9, top - bottom,
                boxstyle="round,pad=0.02,rounding_size=0.15", facecolor=_band_color(component), edgecolor="#777777",
                linewidth=0.8, zorder=0,
            )
        )  # fmt: skip
        axes.text((first + last) / 2, top - 0.05, _band_title(component), ha="center", va="top", fontsize=11, fontweight="bold", zorder=5)

    # frontier labels under the boundaries between bands
    for index, (left, right) in enumerate(zip(picture.spans, picture.spans[1:])):
        x = (left[1] + right[0]) / 2
        axes.axvline(x, color=_FRONTIER_COLOR, linestyle="--", linewidth=1.0, zorder=1)
        axes.text(
            x, bottom - 0.2, _frontier_text(index, decomposition), ha="center", va="top", fontsize=8,
            color="#5a2d05", bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": _FRONTIER_COLOR}, zorder=6,
        )  # fmt: skip

    # the graph
    graph = nx.DiGraph()
    graph.add_nodes_from(picture.labels)
    plain = [(start, end) for start, end, crossed in picture.edges if crossed is None]
    crossing = [(start, end) for start, end, crossed in picture.edges if crossed is not None]
    graph.add_edges_from(plain + crossing)
    positions = picture.positions
    nx.draw_networkx_edges(graph, positions, edgelist=plain, ax=axes, edge_color="#888888", width=0.8, arrowsize=7, node_size=900)
    # An edge that skips whole components (a side term passed through) bends away from the trunk.
    band = {key: next(index for index, (first, last) in enumerate(picture.spans) if first <= x <= last) for key, (x, _) in positions.items()}
    skipping = [(start, end) for start, end in crossing if band[end] - band[start] > 1]
    adjacent = [edge for edge in crossing if edge not in skipping]
    nx.draw_networkx_edges(graph, positions, edgelist=adjacent, ax=axes, edge_color=_FRONTIER_COLOR, width=2.2, arrowsize=9, node_size=900)
    nx.draw_networkx_edges(
        graph, positions, edgelist=skipping, ax=axes, edge_color=_FRONTIER_COLOR, width=2.2, arrowsize=9, node_size=900,
        connectionstyle="arc3,rad=-0.12", style="dashed",
    )  # fmt: skip
    styles = {
        "layer": {"facecolor": "#34495e", "color": "white", "fontweight": "bold"},
        "op": {"facecolor": "white", "color": "black", "fontweight": "normal"},
        "input": {"facecolor": "#eeeeee", "color": "#333333", "fontweight": "normal"},
    }
    for key, label in picture.labels.items():
        style = styles[picture.kinds[key]]
        x, y = positions[key]
        axes.text(
            x, y, label, ha="center", va="center", fontsize=8, color=style["color"], fontweight=style["fontweight"], zorder=4,
            bbox={"boxstyle": "round,pad=0.25", "facecolor": style["facecolor"], "edgecolor": "#555555", "linewidth": 0.6},
        )  # fmt: skip

    axes.set_xlim(-0.8, columns - 0.2)
    axes.set_ylim(bottom - 1.6 - 0.12 * min(9, max((len(f.tensors) for f in decomposition.frontiers), default=1)), top + 0.2)
    axes.axis("off")
    axes.set_title(summary_line(inspection), fontsize=10, loc="left")
    figure.text(0.01, 0.005, "dark boxes: layers with weights; orange: tensors crossing a frontier (dashed: passed through whole blocks); reshape-like ops hidden", fontsize=7, color="#555555")
    figure.tight_layout()
    write_atomic(target, lambda tmp: figure.savefig(tmp, format=fmt, dpi=100))
    plt.close(figure)


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _draw_with_graphviz(inspection: Inspection, picture: _Picture, target: Path, fmt: str) -> None:
    decomposition = inspection.decomposition
    lines = ["digraph akfc {", "  rankdir=LR; compound=true; node [shape=box, style=\"rounded,filled\", fontsize=10];"]
    owners: dict[int, list[str]] = {}
    for key, (x, _) in picture.positions.items():
        position = next(index for index, (first, last) in enumerate(picture.spans) if first <= x <= last)
        owners.setdefault(position, []).append(key)
    for position, component in enumerate(decomposition.components):
        lines.append(f"  subgraph cluster_{position} {{")
        lines.append(f"    label={_dot_quote(_band_title(component))}; style=filled; fillcolor={_dot_quote(_band_color(component))};")
        members = owners.get(position, [])
        if not members:
            lines.append(f"    empty_{position} [label=\"identity\", shape=plaintext, style=\"\"];")
        for key in members:
            fill = {"layer": "#34495e", "op": "white", "input": "#eeeeee"}[picture.kinds[key]]
            font = "white" if picture.kinds[key] == "layer" else "black"
            lines.append(f"    {_dot_quote(key)} [label={_dot_quote(picture.labels[key])}, fillcolor={_dot_quote(fill)}, fontcolor={_dot_quote(font)}];")
        lines.append("  }")
    for start, end, crossed in picture.edges:
        if crossed is None:
            lines.append(f"  {_dot_quote(start)} -> {_dot_quote(end)} [color=\"#888888\"];")
        else:
            lines.append(
                f"  {_dot_quote(start)} -> {_dot_quote(end)} [color={_dot_quote(_FRONTIER_COLOR)}, penwidth=2.5, "
                f"label={_dot_quote(_short(crossed))}, fontcolor={_dot_quote(_FRONTIER_COLOR)}, fontsize=8];"
            )
    lines.append(f"  labelloc=t; label={_dot_quote(summary_line(inspection))};")
    lines.append("}")
    with tempfile.NamedTemporaryFile("w", suffix=".dot", delete=False) as handle:
        handle.write("\n".join(lines))
        dot_file = handle.name
    try:
        write_atomic(target, lambda tmp: subprocess.run(["dot", f"-T{fmt}", "-o", str(tmp), dot_file], check=True, capture_output=True, text=True))
    except subprocess.CalledProcessError as error:
        raise ModelError(f"graphviz dot failed to draw {target}: {error.stderr.strip()}") from error
    finally:
        Path(dot_file).unlink(missing_ok=True)
