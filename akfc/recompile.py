"""Recompile a trained fused model into one ONNX graph.

The sources' components go in as their normalised ONNX nodes, not re-exported
from torch, so every frozen component keeps its initializers byte for byte.
The AKF parts (one graph per level, plus the task mixtures) are exported from
torch and spliced in with onnx-graphsurgeon:

1. the sources' nodes are gathered into one graph whose inputs are the data
   columns, with casts, reshapes or packing where a source's input differs
   from the column it reads;
2. level k's AKF graph reads every source's level-k frontier, and every node
   of a later component that read a frontier tensor reads the fed-back one;
3. the mixture graph reads the heads' outputs and writes one output per task.

An adapter whose weight and bias are still all zero adds exactly nothing.
That happens when its task stopped improving before training moved it. Its
frontier tensor is then not rewired, so its nodes are dropped, and a level
whose adapters are all zero is left out whole. A fused model that never beat
its starting point thus compiles to its sources and their mixture alone.

A head-only source (no interior frontier) is one component that ends at its
task output. No level reads or changes it, so only the mixture reads its output.
String columns (raw categoricals) are graph inputs of type string like any other.

Node names carry a namespace path (`<source>/<component>/<node>`,
`akf/level<k>/<node>`, `akf/mixture/<node>`), so viewers that group nodes by
namespace show the structure.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx.compose
import onnx.numpy_helper
import onnx_graphsurgeon as gs
import onnxscript.optimizer
import torch
from torch import Tensor, nn

from akfc.errors import ModelError
from akfc.fusion import AKFLevel, FusedModel, TaskMixture

__all__ = ["WIDENS_TO", "FusedInput", "SourceLayout", "export_module", "recompile"]

logger = logging.getLogger(__name__)

# Lossless widening casts a fused input may feed: fused dtype -> dtypes a source may read it as.
WIDENS_TO = {
    np.dtype(np.int32): {np.dtype(np.int64), np.dtype(np.float64)},
    np.dtype(np.int8): {np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.int64)},
    np.dtype(np.int16): {np.dtype(np.int32), np.dtype(np.int64)},
    np.dtype(np.float16): {np.dtype(np.float32), np.dtype(np.float64)},
    np.dtype(np.float32): {np.dtype(np.float64)},
    np.dtype(np.bool_): {np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.float32)},
}

# Size limit, in elements, for folding constants in exported AKF graphs: none, because the folded tensors are weights.
_FOLD_ANY_SIZE = 1 << 40


@dataclass
class SourceLayout:
    """Position of a source's components and frontiers in its normalised graph."""

    name: str  # source id; every tensor and node name of `model` already starts with it
    task: str
    model: onnx.ModelProto  # the normalised source
    components: list[list[str]]  # node names per component: stem, block 1..L, head
    frontiers: list[list[str]]  # tensor names: F_0 (stem output) .. F_L (head input)
    head_output: str  # the tensor the head ends at: the logit, or the output when there is none
    inputs: dict[str, str | list[str]] = field(default_factory=dict)  # graph input -> data column(s)
    # component index -> initializer name -> trained value, for components whose weights were trained
    trained: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)


@dataclass
class FusedInput:
    """A graph input of the fused graph: a data column with the dtype and shape it is fed as."""

    column: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]


@contextlib.contextmanager
def _quiet_exporter_registry() -> Iterator[None]:
    """Silence the exporter's registry warnings (one per torchvision op when torchvision is absent) during an export."""
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry.level
    registry.setLevel(logging.ERROR)
    try:
        yield
    finally:
        registry.setLevel(level)


def export_module(module: nn.Module, example: Sequence[Tensor], input_names: Sequence[str], output_names: Sequence[str], opset: int) -> onnx.ModelProto:
    """Export a torch module whose forward takes `*tensors`, with the torch exporter and every input's first axis dynamic."""
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings(), _quiet_exporter_registry():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            tuple(example),
            dynamo=True,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(output_names),
            # forward(*tensors) is one variadic argument to torch.export, hence the nesting.
            dynamic_shapes=(tuple({0: batch} for _ in example),),
            verbose=False,
        )
    # The exporter folds constants of up to 8192 elements only (onnxscript 0.7), so slices of larger
    # weight matrices, such as the attention's in-projection cut into query, key and value, would
    # stay nodes. Fold them all into initializers.
    return onnxscript.optimizer.optimize(program.model_proto, input_size_limit=_FOLD_ANY_SIZE, output_size_limit=_FOLD_ANY_SIZE)


class _LevelGraph(nn.Module):
    """One AKF level with flat float inputs and outputs, for export."""

    def __init__(self, level: AKFLevel) -> None:
        super().__init__()
        self.level = level

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        frontiers, position = [], 0
        for shapes, is_float in zip(self.level.shapes, self.level.is_float):
            frontier = []
            for float_tensor in is_float:
                if float_tensor:
                    frontier.append(tensors[position])
                    position += 1
                else:
                    # Integer frontier tensors are neither read nor changed by the fusion.
                    frontier.append(torch.zeros(0))
            frontiers.append(tuple(frontier))
        fed_back, _, _ = self.level(frontiers)
        return tuple(t for frontier, mask in zip(fed_back, self.level.is_float) for t, f in zip(frontier, mask) if f)


class _MixtureGraph(nn.Module):
    """Every task's mixture over its sources' head outputs, for export."""

    def __init__(self, model: FusedModel) -> None:
        super().__init__()
        self.mixtures = model.mixtures
        self.task_sources = model.task_sources
        self.task_names = model.task_names

    def forward(self, *head_outputs: Tensor) -> tuple[Tensor, ...]:
        mixture: TaskMixture
        return tuple(
            self.mixtures[task]([head_outputs[m] for m in self.task_sources[task]]) for task in self.task_names
        )


def _rename_nodes(model: onnx.ModelProto, components: Sequence[Sequence[str]], source: str) -> dict[str, str]:
    """Return node name -> namespaced name `<source>/<component>/<node>` for the nodes of each component."""
    labels = ["stem", *(f"level{k}" for k in range(1, len(components) - 1)), "head"]
    names: dict[str, str] = {}
    for label, nodes in zip(labels, components):
        for node in nodes:
            short = node[len(source) + 1 :] if node.startswith(f"{source}/") else node
            names[node] = f"{source}/{label}/{short}"
    return names


def _value_info(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    inferred = onnx.shape_inference.infer_shapes(model)
    return {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}


def _float_frontier(model: onnx.ModelProto, tensors: Sequence[str]) -> list[str]:
    infos = _value_info(model)
    floats = []
    for name in tensors:
        elem = infos[name].type.tensor_type.elem_type
        if np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).kind == "f":
            floats.append(name)
    return floats


def _assemble_sources(layouts: Sequence[SourceLayout], opset: int, ir_version: int) -> onnx.ModelProto:
    """Gather the sources' component nodes and initializers into one model (inputs: the sources' own, prefixed)."""
    nodes, initializers, inputs, value_infos = [], [], [], []
    for layout in layouts:
        renamed = _rename_nodes(layout.model, layout.components, layout.name)
        owner = {node: index for index, component in enumerate(layout.components) for node in component}
        # A trained initializer gets its own copy, so a frozen component that shares it keeps the original bytes.
        trained_names = {index: {name: f"{name}/trained" for name in values} for index, values in layout.trained.items()}
        for node in layout.model.graph.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            # Nodes outside every component are the shape and constant computations that components share.
            copy.name = renamed.get(node.name, f"{layout.name}/shared/{node.name[len(layout.name) + 1 :]}")
            names = trained_names.get(owner.get(node.name, -1), {})
            for i, name in enumerate(copy.input):
                copy.input[i] = names.get(name, name)
            nodes.append(copy)
        initializers.extend(layout.model.graph.initializer)
        for index, values in layout.trained.items():
            initializers.extend(onnx.numpy_helper.from_array(value, trained_names[index][name]) for name, value in values.items())
        inputs.extend(layout.model.graph.input)
        value_infos.append(_value_info(layout.model)[layout.head_output])
    graph = onnx.helper.make_graph(nodes, "fused", inputs, value_infos, initializers)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)], ir_version=ir_version)
    for layout in layouts:
        for opset_id in layout.model.opset_import:
            if opset_id.domain not in ("", "ai.onnx") and all(o.domain != opset_id.domain for o in model.opset_import):
                model.opset_import.append(opset_id)
    return model


def _bind_inputs(graph: gs.Graph, layouts: Sequence[SourceLayout], fused_inputs: Sequence[FusedInput]) -> list[dict[str, str]]:
    """Replace every source's graph inputs by the data-column inputs, converting where their types differ.

    Returns, per source, its graph input names -> the tensor that now feeds
    each, because a frontier may pass a graph input through unchanged.
    """
    columns = {fused.column: gs.Variable(fused.column, dtype=fused.dtype, shape=list(fused.shape)) for fused in fused_inputs}
    tensors = graph.tensors()
    renamed: list[dict[str, str]] = []
    for layout in layouts:
        renamed.append({})
        for value in layout.model.graph.input:
            if value.name not in tensors:
                continue  # an input no kept node reads
            source_input = tensors[value.name]
            binding = layout.inputs.get(value.name) or layout.inputs.get(value.name[len(layout.name) + 1 :]) or value.name[len(layout.name) + 1 :]
            fed = _feed(graph, layout.name, source_input, binding, columns)
            for node in list(source_input.outputs):
                _replace_input(node, source_input, fed)
            renamed[-1][value.name] = fed.name
    graph.inputs = list(columns.values())
    return renamed


def _feed(graph: gs.Graph, source: str, target: gs.Variable, binding: str | list[str], columns: Mapping[str, gs.Variable]) -> gs.Variable:
    """Return a tensor of the source input's dtype and rank computed from its column(s)."""
    dtype = np.dtype(target.dtype)
    rank = len(target.shape)
    prefix = f"{source}/bind/{target.name[len(source) + 1 :]}"
    if isinstance(binding, list):
        # A packed input gathers columns of mixed types (ids beside floats) on purpose; the values were
        # converted the same way when the data was bound for training, and the parity check compares both.
        parts = [_cast(graph, columns[c], dtype, f"{prefix}/{c}", source, target.name, packed=True) for c in binding]
        parts = [_reshape_rank(graph, p, 2, f"{prefix}/{c}") for p, c in zip(parts, binding)]
        out = gs.Variable(f"{prefix}/packed", dtype=dtype, shape=[target.shape[0], len(binding)])
        graph.nodes.append(gs.Node("Concat", f"{prefix}/Concat", {"axis": 1}, parts, [out]))
        return out
    column = columns[binding]
    fed = _cast(graph, column, dtype, prefix, source, target.name)
    return _reshape_rank(graph, fed, rank, prefix)


def _cast(graph: gs.Graph, column: gs.Variable, dtype: np.dtype, prefix: str, source: str, input_name: str, *, packed: bool = False) -> gs.Variable:
    have = np.dtype(column.dtype)
    if have == dtype:
        return column
    numeric = have.kind in "biuf" and dtype.kind in "biuf"
    if not (packed and numeric) and dtype not in WIDENS_TO.get(have, set()):
        raise ModelError(
            f"source {source!r}: graph input {input_name!r} needs {dtype} but column {column.name!r} is fed as {have}, "
            "and that cast can lose values; make the sources agree on the input type"
        )
    out = gs.Variable(f"{prefix}/cast", dtype=dtype, shape=column.shape)
    graph.nodes.append(gs.Node("Cast", f"{prefix}/Cast", {"to": onnx.helper.np_dtype_to_tensor_dtype(dtype)}, [column], [out]))
    return out


def _reshape_rank(graph: gs.Graph, tensor: gs.Variable, rank: int, prefix: str) -> gs.Variable:
    have = len(tensor.shape)
    if have == rank:
        return tensor
    if have == 1 and rank == 2:
        axes = gs.Constant(f"{prefix}/axes", np.array([1], dtype=np.int64))
        out = gs.Variable(f"{prefix}/column", dtype=tensor.dtype, shape=[tensor.shape[0], 1])
        graph.nodes.append(gs.Node("Unsqueeze", f"{prefix}/Unsqueeze", inputs=[tensor, axes], outputs=[out]))
        return out
    if have == 2 and rank == 1:
        axes = gs.Constant(f"{prefix}/axes", np.array([1], dtype=np.int64))
        out = gs.Variable(f"{prefix}/flat", dtype=tensor.dtype, shape=[tensor.shape[0]])
        graph.nodes.append(gs.Node("Squeeze", f"{prefix}/Squeeze", inputs=[tensor, axes], outputs=[out]))
        return out
    raise ModelError(f"cannot feed {tensor.name!r} of rank {have} to an input of rank {rank}")


def _replace_input(node: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
    """Make `node` read `new` wherever it read `old` (graphsurgeon keeps producer/consumer links in sync)."""
    for index, tensor in enumerate(node.inputs):
        if tensor is old:
            node.inputs[index] = new


def _splice(graph: gs.Graph, piece: onnx.ModelProto, prefix: str, reads: Sequence[str], writes: Sequence[tuple[str, set[str]]]) -> list[str]:
    """Splice an exported piece into the graph.

    Arguments:
        graph: the fused graph so far.
        piece: the exported piece; its graph inputs are read from `reads`, in order.
        prefix: namespace for the piece's node and tensor names.
        reads: graph tensor names feeding the piece's inputs.
        writes: per piece output, in order: the graph tensor it replaces and the
            names of the nodes that must read the piece output instead.

    Returns:
        The names of the piece's outputs in the graph.
    """
    piece = onnx.compose.add_prefix(piece, f"{prefix}/")
    imported = gs.import_onnx(piece)
    tensors = graph.tensors()
    for piece_input, name in zip(imported.inputs, reads):
        for node in list(piece_input.outputs):
            _replace_input(node, piece_input, tensors[name])
    for piece_output, (name, readers) in zip(imported.outputs, writes):
        for node in list(tensors[name].outputs):
            if node.name in readers:
                _replace_input(node, tensors[name], piece_output)
    graph.nodes.extend(imported.nodes)
    return [t.name for t in imported.outputs]


def recompile(
    model: FusedModel,
    layouts: Sequence[SourceLayout],
    fused_inputs: Sequence[FusedInput],
    task_outputs: Mapping[str, str],
    opset: int,
    ir_version: int,
    example_frontiers: Sequence[Sequence[Tensor]],
) -> onnx.ModelProto:
    """Build the fused ONNX graph of a trained fused model.

    Arguments:
        model: the trained fused model (in eval mode).
        layouts: per source, in the model's source order, where its parts sit.
        fused_inputs: the data columns that become the fused graph's inputs.
        task_outputs: task -> graph output name.
        opset: the common opset of the sources; the AKF parts are exported at it.
        ir_version: the IR version of the fused model.
        example_frontiers: per level 1..L, per source, a few rows of that
            level's output frontier, to export the AKF level graphs with.
    """
    model.eval()
    assembled = _assemble_sources(layouts, opset, ir_version)
    graph = gs.import_onnx(assembled)
    bound = _bind_inputs(graph, layouts, fused_inputs)

    # Which nodes read level-k's frontier after level k: every component past it.
    later_nodes = [
        [
            {_rename_nodes(layout.model, layout.components, layout.name)[n] for component in layout.components[k + 1 :] for n in component}
            for layout in layouts
        ]
        for k in range(len(layouts[0].components))
    ]
    current = [{name: bound[m].get(name, name) for frontier in layout.frontiers for name in frontier} for m, layout in enumerate(layouts)]

    # 1. one AKF graph per level, spliced between the blocks
    for k, level in enumerate(model.levels, start=1):
        reads, writes, example, fed = [], [], [], []
        for fused_index, m in enumerate(model.fused_sources):
            layout = layouts[m]
            position = {name: j for j, name in enumerate(layout.frontiers[k])}
            for name in _float_frontier(layout.model, layout.frontiers[k]):
                # An adapter still at its zero start adds exactly nothing: later components keep reading the block's own output.
                live = _adapter_is_live(level.adapters[fused_index][position[name]])
                reads.append(current[m][name])
                writes.append((current[m][name], later_nodes[k][m] if live else set()))
                example.append(example_frontiers[k - 1][m][position[name]])
                fed.append((m, name) if live else None)
        if not any(fed):
            logger.info("level %d: every adapter is zero, so the level adds nothing and is left out", k)
            continue
        names = [f"in{i}" for i in range(len(reads))]
        piece = export_module(_LevelGraph(level), example, names, [f"out{i}" for i in range(len(reads))], opset)
        outputs = _splice(graph, piece, f"akf/level{k}", reads, writes)
        for target, output in zip(fed, outputs):
            if target is not None:
                current[target[0]][target[1]] = output

    # 2. the task mixtures over the heads' outputs
    heads = [layout.head_output for layout in layouts]
    with torch.no_grad():
        head_examples = _head_examples(model, example_frontiers[-1])
    mixture = export_module(_MixtureGraph(model), head_examples, [f"head{m}" for m in range(len(heads))], list(task_outputs.values()), opset)
    piece = onnx.compose.add_prefix(mixture, "akf/mixture/", rename_outputs=False)
    imported = gs.import_onnx(piece)
    tensors = graph.tensors()
    for piece_input, name in zip(imported.inputs, heads):
        for node in list(piece_input.outputs):
            _replace_input(node, piece_input, tensors[name])
    graph.nodes.extend(imported.nodes)
    graph.outputs = list(imported.outputs)

    # 3. tidy: drop what no output needs, order the nodes, write the proto
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    fused = gs.export_onnx(graph, do_type_check=True)
    fused.ir_version = ir_version
    del fused.opset_import[:]
    fused.opset_import.extend(assembled.opset_import)
    return fused


def _adapter_is_live(adapter: nn.Module) -> bool:
    """Return whether a feedback adapter can add anything: False while its weight and bias are still all zero."""
    return any(bool(parameter.detach().any()) for parameter in adapter.parameters())


def _head_examples(model: FusedModel, level_frontiers: Sequence[Sequence[Tensor]]) -> list[Tensor]:
    """Run each head on a few rows of its input frontier, for the mixture's export."""
    outputs = []
    for m, frontier in enumerate(level_frontiers):
        out = model.heads[m](*frontier)
        outputs.append(out[0] if isinstance(out, (tuple, list)) else out)
    return outputs
