"""Decompose a model into components along frontiers.

A *frontier* is a set of tensors that every path from the graph inputs to the
graph outputs crosses. Frontiers are found as minimum-width vertex cuts of the
dataflow graph with networkx max-flow/min-cut: each tensor is an edge whose
capacity is its width (elements per row). Three kinds of tensor cannot be cut
and get infinite capacity. Shape and constant tensors are recomputed by every
component that needs them. Tensors without a batch axis at dim 0 have no
per-row width. The inside of a layer, from its MatMul/Gemm to the end of its
bias, normalisation and activation, is never split.
Reverse edges of infinite capacity keep every component convex: no path leaves
a component and comes back into it.

The frontiers, in order (levels L, default 3):
    stem frontier  the narrowest cut after every raw input has been consumed by
                   lookups and preprocessing, before the trunk's first layer;
    head frontier  the input of the last layer: of the layer nearest the output
                   on the heaviest path, and of every other last layer that
                   follows another layer (a one-layer side term such as a
                   linear first-order term stays before it);
    level k        between them, L-1 cuts at layer ends of the *trunk* (what lies
                   between the stem and head frontiers), each as close as the
                   trunk allows to the fraction k/L of the trunk's FLOPs. A trunk
                   with fewer than L layers leaves identity blocks at the levels
                   it lacks; it is never cut inside a layer.

Components: stem (graph inputs to the stem frontier), block k (frontier k-1 to
frontier k, k = 1..L) and head (head frontier to the graph outputs). A tensor
that stays live across several levels, such as a [batch, 1] linear side term,
is part of every frontier it crosses, so blocks pass it through.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import networkx as nx
import onnx

from akfc.errors import ModelError
from akfc.passes.dataflow import DATA, INPUT, Dataflow, analyze, dtype_name

__all__ = [
    "DEFAULT_LEVELS",
    "Component",
    "Decomposition",
    "Frontier",
    "TensorSpec",
    "decompose",
]

logger = logging.getLogger(__name__)

DEFAULT_LEVELS = 3

# Ops that may follow a layer's MatMul/Gemm inside the same layer: bias, scale, normalisation, activation.
_EPILOGUE_OPS = frozenset(
    {
        "Abs", "Add", "BatchNormalization", "Cast", "Celu", "Clip", "Div", "Dropout", "Elu", "Erf", "Exp", "Gelu",
        "GroupNormalization", "HardSigmoid", "HardSwish", "Identity", "InstanceNormalization", "LayerNormalization",
        "LeakyRelu", "Log", "Max", "Min", "Mish", "Mul", "Neg", "Pow", "PRelu", "Reciprocal", "ReduceL2",
        "ReduceMean", "ReduceSum", "ReduceSumSquare", "Relu", "RMSNormalization", "Selu", "Sigmoid", "Softplus",
        "Softsign", "Sqrt", "Sub", "Tanh", "ThresholdedRelu",
    }
)  # fmt: skip
# Outputs of these ops are layer ends wherever they appear.
_LAYER_END_OPS = frozenset(
    {
        "BatchNormalization", "Celu", "Elu", "Gelu", "GroupNormalization", "HardSigmoid", "HardSwish",
        "InstanceNormalization", "LayerNormalization", "LeakyRelu", "Mish", "PRelu", "Relu", "RMSNormalization",
        "Selu", "Sigmoid", "Softplus", "Softsign", "Tanh", "ThresholdedRelu",
    }
)  # fmt: skip
_LOOKUP_OPS = frozenset({"Gather", "GatherElements", "GatherND"})
# Resolution of the FLOPs placement preference between cuts of equal width: hundredths of the model's FLOPs,
# so ops below 1% of the FLOPs (a final scale of a side term) never hold a side branch back.
_PLACEMENT_UNITS = 100
# Weight of a frontier's width, relative to the widest candidate, against the distance of its FLOPs fraction from k/L.
_WIDTH_WEIGHT = 0.25


@dataclass(frozen=True)
class TensorSpec:
    """A tensor at a component boundary: its name, element type and shape (dim 0 is the batch dim)."""

    name: str
    dtype: str  # ONNX element type name, e.g. "float", "int64"
    shape: tuple[int | str, ...]

    @property
    def width(self) -> int:
        """Elements per row: the product of the dims after the batch dim."""
        return math.prod(int(dim) for dim in self.shape[1:])

    def __repr__(self) -> str:
        return f"{self.name}: {self.dtype}[{', '.join(str(dim) for dim in self.shape)}]"


@dataclass(frozen=True)
class Frontier:
    """The tensors at one component boundary."""

    tensors: tuple[TensorSpec, ...]
    fraction: float  # share of the trunk's FLOPs computed before this frontier (0 at the stem, 1 at the head)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(tensor.name for tensor in self.tensors)

    @property
    def width(self) -> int:
        return sum(tensor.width for tensor in self.tensors)

    def __repr__(self) -> str:
        return f"Frontier(width={self.width}, fraction={self.fraction:.2f}, tensors={list(self.tensors)})"


@dataclass(frozen=True)
class Component:
    """One piece of a decomposed model: its nodes and the tensors it reads and writes."""

    name: str  # "stem", "block1".."blockL", "head"
    kind: str  # "stem", "block" or "head"
    level: int  # 0 for the stem, k for block k, L + 1 for the head
    nodes: tuple[str, ...]  # names of the data nodes it computes, in graph order
    inputs: tuple[TensorSpec, ...]  # graph inputs for the stem, else the previous frontier
    outputs: tuple[TensorSpec, ...]  # the next frontier, or the graph outputs for the head
    params: int  # floating-point parameter elements read by its nodes
    flops: int  # FLOPs per row
    ops: Mapping[str, int] = field(default_factory=dict)  # node count by op type

    @property
    def identity(self) -> bool:
        """True for a block that computes nothing and passes its input frontier through."""
        return not self.nodes

    def __repr__(self) -> str:
        ops = ", ".join(f"{op}: {count}" for op, count in self.ops.items())
        return (
            f"Component({self.name}, level={self.level}, {len(self.nodes)} nodes {{{ops}}}, params={self.params}, "
            f"flops={self.flops}, inputs={list(self.inputs)}, outputs={list(self.outputs)})"
        )


@dataclass(frozen=True, eq=False)
class Decomposition:
    """A model cut into stem, blocks 1..L and head."""

    levels: int  # L, the number of blocks
    components: tuple[Component, ...]  # stem, block1..blockL, head
    frontiers: tuple[Frontier, ...]  # L + 1: the stem frontier, level 1..L-1 frontiers, the head frontier
    outputs: tuple[str, ...]  # graph outputs: the task output first
    batch_dim: str | int
    params: int
    flops: int
    dataflow: Dataflow = field(repr=False)

    @property
    def stem(self) -> Component:
        return self.components[0]

    @property
    def blocks(self) -> tuple[Component, ...]:
        return self.components[1:-1]

    @property
    def head(self) -> Component:
        return self.components[-1]

    def component(self, name: str) -> Component:
        """Return the component called name ("stem", "block1", ..., "head")."""
        for component in self.components:
            if component.name == name:
                return component
        raise KeyError(f"no component {name!r}; the components are {[component.name for component in self.components]}")

    def __repr__(self) -> str:
        lines = [f"Decomposition(levels={self.levels}, params={self.params}, flops={self.flops}, outputs={list(self.outputs)})"]
        for component in self.components:
            lines.append(f"  {component!r}")
        return "\n".join(lines)


def decompose(
    model: onnx.ModelProto,
    *,
    levels: int = DEFAULT_LEVELS,
    frontiers: Mapping[int, Sequence[str]] | None = None,
    dataflow: Dataflow | None = None,
) -> Decomposition:
    """Cut a normalised model into a stem, ``levels`` blocks and a head; the model is not modified.

    Arguments:
        model: a model whose nodes have unique names (``normalize`` ensures it).
        levels: L, the number of blocks.
        frontiers: boundary tensors chosen by the user, by frontier index:
            0 the stem frontier, 1..L-1 the level frontiers, L the head frontier.
            Each must form a frontier; the others are chosen automatically.
        dataflow: ``analyze(model)``, when the caller already has it.

    Returns:
        The components in order, with their frontiers.

    Raises:
        ModelError: a node has no name or shares its name, a user frontier is
            invalid, or no tensor between the inputs and the first layer can be cut.
    """
    if levels < 1:
        raise ValueError(f"levels must be at least 1, got {levels}")
    flow = dataflow if dataflow is not None else analyze(model)
    if flow.model is not model and dataflow is not None:
        raise ValueError("dataflow was computed for a different model")
    _check_node_names(flow)
    planner = _Planner(flow)
    user = _parse_user_frontiers(planner, frontiers or {}, levels)

    # 1. head and stem frontiers
    # A user cut can be empty (a stem frontier of raw inputs), so test for the key, not the value.
    head = user[levels] if levels in user else planner.head_cut()
    stem = user[0] if 0 in user else planner.stem_cut(head)
    if not stem <= head:
        node = flow.nodes[min(stem - head)].name
        raise ModelError(f"the stem frontier is not before the head frontier: node {node!r} lies after the head frontier")

    # 2. level frontiers along the trunk
    interior = {index: cut for index, cut in user.items() if 0 < index < levels}
    for index, cut in interior.items():
        if not stem <= cut <= head:
            raise ModelError(f"frontier {index} is not between the stem and head frontiers")
    candidates = planner.trunk_cuts(stem, head)
    cuts = planner.choose_levels(stem, head, candidates, interior, levels)

    decomposition = _build(planner, cuts, levels)
    logger.info(
        "decomposed into %d levels: frontier widths %s",
        levels, [frontier.width for frontier in decomposition.frontiers],
    )  # fmt: skip
    return decomposition


def _check_node_names(flow: Dataflow) -> None:
    seen: set[str] = set()
    for index, node in enumerate(flow.nodes):
        if not node.name:
            raise ModelError(f"node {index} ({node.op_type}) has no name; run akfc.passes.normalize first")
        if node.name in seen:
            raise ModelError(f"node name {node.name!r} is used twice; run akfc.passes.normalize first")
        seen.add(node.name)


Cut = frozenset[int]  # the data nodes computed before a frontier


def _reachable(seeds: Iterable[int], edges: Mapping[int, Iterable[int]] | Sequence[Iterable[int]]) -> set[int]:
    """Return the seeds and every node reachable from them along `edges` (node index -> neighbour indices)."""
    found: set[int] = set()
    stack = list(seeds)
    while stack:
        index = stack.pop()
        if index not in found:
            found.add(index)
            stack.extend(edges[index])
    return found


class _Planner:
    """The dataflow graph of one model as seen by the min-cut search."""

    def __init__(self, flow: Dataflow) -> None:
        self.flow = flow
        self.nodes = [index for index in range(len(flow.nodes)) if index in flow.live and flow.is_data_node(index)]
        node_set = set(self.nodes)
        self.preds = {index: [p for p in flow.data_producers(index) if p in node_set] for index in self.nodes}
        self.succs: dict[int, list[int]] = {index: [] for index in self.nodes}
        for index in self.nodes:
            for pred in self.preds[index]:
                self.succs[pred].append(index)
        self.weight = {index: flow.node_flops[index] + 1 for index in self.nodes}
        self.layers = [index for index in self.nodes if flow.is_layer(index)]

        # tensors the cut can cross: raw inputs and data tensors that a data node or a graph output reads
        outputs = set(flow.outputs)
        self.flow_tensors: dict[str, tuple[int | None, tuple[int, ...]]] = {}
        for name, kind in flow.tensor_class.items():
            if kind not in (INPUT, DATA):
                continue
            producer = flow.producer.get(name)
            if producer is not None and producer not in node_set:
                continue
            readers = tuple(index for index in flow.data_consumers(name) if index in node_set)
            if readers or name in outputs:
                self.flow_tensors[name] = (producer, readers)

        self.interior, self.layer_ends, self.epilogue = self._layer_regions()
        self.depth = self._layer_depth()

    # -- structure ---------------------------------------------------------------------------------

    def _layer_regions(self) -> tuple[set[str], set[str], dict[int, set[int]]]:
        """Find each layer's epilogue (bias, normalisation, activation) and the tensors inside it."""
        flow = self.flow
        interior: set[str] = set()
        ends: set[str] = set()
        epilogue: dict[int, set[int]] = {}
        for layer in self.layers:
            region = {layer}
            tensors = {name for name in flow.nodes[layer].output if name}
            queue = sorted(self.succs[layer])
            while queue:
                index = queue.pop(0)
                node = flow.nodes[index]
                if index in region or node.op_type not in _EPILOGUE_OPS or node.domain not in ("", "ai.onnx"):
                    continue
                if not all(name in tensors for name in flow.data_inputs(index)):
                    continue
                region.add(index)
                tensors.update(name for name in node.output if name)
                queue = sorted(set(queue) | set(self.succs[index]))
            exits = {
                name
                for name in tensors
                if name in flow.outputs or any(reader not in region for reader in flow.data_consumers(name))
            }
            interior |= tensors - exits
            ends |= exits
            epilogue[layer] = region
        for index in self.nodes:
            if self.flow.nodes[index].op_type in _LAYER_END_OPS:
                ends.update(name for name in self.flow.nodes[index].output if name and name not in interior)
        return interior, ends, epilogue

    def _layer_depth(self) -> dict[int, int]:
        depth: dict[int, int] = {}
        for index in self.nodes:
            depth[index] = max((depth[pred] for pred in self.preds[index]), default=0) + (1 if index in self.epilogue else 0)
        return depth

    def cuttable(self, name: str) -> bool:
        info = self.flow.tensors.get(name)
        return info is not None and info.batched and name not in self.interior

    def ancestors(self, seeds: Iterable[int]) -> set[int]:
        return _reachable(seeds, self.preds)

    def descendants(self, seeds: Iterable[int]) -> set[int]:
        return _reachable(seeds, self.succs)

    def heaviest_path(self, within: set[int]) -> list[int]:
        """Return the path of maximum FLOPs through the given nodes, in graph order."""
        best: dict[int, tuple[int, int | None]] = {}
        for index in self.nodes:
            if index not in within:
                continue
            pred = max((p for p in self.preds[index] if p in best), key=lambda p: (best[p][0], p), default=None)
            best[index] = (self.weight[index] + (best[pred][0] if pred is not None else 0), pred)
        if not best:
            return []
        end: int | None = max(best, key=lambda index: (best[index][0], index))
        path = []
        while end is not None:
            path.append(end)
            end = best[end][1]
        return path[::-1]

    def crossing(self, cut: Cut) -> list[str]:
        """Return the tensors produced before the cut (or raw inputs) that are read after it, in graph order."""
        names = []
        outputs = set(self.flow.outputs)
        for name, (producer, readers) in self.flow_tensors.items():
            if producer is not None and producer not in cut:
                continue
            if name in outputs or any(reader not in cut for reader in readers):
                names.append(name)
        return self._ordered(names)

    def _ordered(self, names: Iterable[str]) -> list[str]:
        inputs = {name: position for position, name in enumerate(self.flow.inputs)}

        def key(name: str) -> tuple[int, int, int]:
            producer = self.flow.producer.get(name)
            if producer is None:
                return (0, inputs.get(name, 0), 0)
            return (1, producer, list(self.flow.nodes[producer].output).index(name))

        return sorted(set(names), key=key)

    def fraction(self, cut: Cut, stem: Cut, head: Cut) -> float:
        trunk = head - stem
        total = sum(self.flow.node_flops[index] for index in trunk)
        if not trunk:
            return 0.0
        if total == 0:
            return len(cut & trunk) / len(trunk)
        return sum(self.flow.node_flops[index] for index in cut & trunk) / total

    # -- min-cut ------------------------------------------------------------------------------------

    def _capacity(self, name: str, scale: int, preference: int) -> int | None:
        """Width first; among equal widths, a cut of layer ends (or raw inputs) costs less."""
        if not self.cuttable(name):
            return None
        width = self.flow.tensors[name].width or 0
        off_layer_end = name not in self.layer_ends and self.flow.tensor_class.get(name) != INPUT
        return width * scale + (preference if off_layer_end else 0)

    def min_cut(self, source: set[int], sink: set[int], *, prefer: str) -> Cut | None:
        """Return the narrowest convex cut with ``source`` before it and ``sink`` after it, or None if there is none.

        Costs are lexicographic. Width comes first, then the number of tensors
        that are not layer ends, then placement in hundredths of the model's
        FLOPs: ``prefer="early"`` takes the cut with the fewest FLOPs before it
        and ``"late"`` the one with the most. The last tier favours more nodes
        before the cut, so free ops (a final scale of a side term) finish early.
        """
        if source & sink:
            return None
        # Each cost tier sums to less than one unit of the tier above it.
        total_flops = max(1, sum(self.flow.node_flops[index] for index in self.nodes))
        placement = {index: (_PLACEMENT_UNITS * self.flow.node_flops[index]) // total_flops for index in self.nodes}
        count_unit = 1
        placement_unit = len(self.nodes) + 1
        preference = (_PLACEMENT_UNITS + 1) * placement_unit
        scale = preference * (len(self.flow_tensors) + 1) + 1
        graph = nx.DiGraph()
        graph.add_node("s")
        graph.add_node("t")
        outputs = set(self.flow.outputs)
        for name, (producer, readers) in self.flow_tensors.items():
            start = ("n", producer) if producer is not None else ("i", name)
            if producer is None:
                graph.add_edge("s", start)
            capacity = self._capacity(name, scale, preference)
            if capacity is None:
                graph.add_edge(start, ("x", name))
            else:
                graph.add_edge(start, ("x", name), capacity=capacity)
            for reader in readers:
                graph.add_edge(("x", name), ("n", reader))
                # Reverse edge: a reader before the cut forces its producer before the cut (convexity).
                graph.add_edge(("n", reader), start)
            if name in outputs:
                graph.add_edge(("x", name), "t")
        for index in self.nodes:
            if index in source:
                graph.add_edge("s", ("n", index))
            elif index in sink:
                graph.add_edge(("n", index), "t")
            elif prefer == "early":
                # A node after the cut costs one count unit; one before it costs its FLOPs share.
                graph.add_edge("s", ("n", index), capacity=count_unit)
                if placement[index]:
                    graph.add_edge(("n", index), "t", capacity=placement[index] * placement_unit)
            else:
                graph.add_edge("s", ("n", index), capacity=placement[index] * placement_unit + count_unit)
        try:
            _, (reachable, _) = nx.minimum_cut(graph, "s", "t")
        except nx.NetworkXUnbounded:
            return None
        return frozenset(vertex[1] for vertex in reachable if isinstance(vertex, tuple) and vertex[0] == "n")

    # -- frontiers ----------------------------------------------------------------------------------

    def head_cut(self) -> Cut:
        """Cut before the last layers: everything except them and what follows them."""
        flow = self.flow
        task_output = flow.outputs[0]
        output_node = flow.producer.get(task_output)
        if output_node is None or output_node not in self.succs:
            raise ModelError(
                f"output {task_output!r} is not computed from the graph inputs (at most from their shapes), so it is a constant "
                "and there is nothing to decompose; choose an output computed from the features"
            )
        chain = self.heaviest_path(self.ancestors([output_node]))
        chain_layers = [index for index in chain if index in self.epilogue]
        layer_set = set(self.layers)
        last_layers = [layer for layer in self.layers if not (self.descendants([layer]) - {layer}) & layer_set]
        head_layers = {layer for layer in last_layers if self.depth[layer] >= 2}
        if chain_layers:
            head_layers.add(chain_layers[-1])
        if not head_layers:
            head_layers = set(last_layers) or {output_node}
        after = self.descendants(head_layers)

        # A tensor that cannot be cut (no batch axis at dim 0) moves the frontier back to its producer.
        while True:
            cut = frozenset(self.nodes) - after
            blocked = [name for name in self.crossing(cut) if not self.cuttable(name)]
            if not blocked:
                return cut
            producers = [self.flow_tensors[name][0] for name in blocked]
            if any(producer is None for producer in producers):
                name = blocked[producers.index(None)]
                raise ModelError(f"graph input {name!r} has no batch axis at dim 0, so no frontier can pass it")
            after |= self.descendants(producer for producer in producers if producer is not None)

    def stem_cut(self, head: Cut) -> Cut:
        """Cut after every raw input is consumed by lookups and preprocessing, before the trunk's first layer."""
        flow = self.flow
        seeds = []
        for index in self.nodes:
            if self.depth[index] != 0:
                continue
            node = flow.nodes[index]
            reads_input = any(flow.tensor_class.get(name) == INPUT for name in flow.data_inputs(index))
            is_lookup = node.op_type in _LOOKUP_OPS and flow.tensor_class.get(node.input[0]) not in (INPUT, DATA)
            if reads_input or is_lookup:
                seeds.append(index)
        preprocessing = self.ancestors(seeds)
        chain = self.heaviest_path(set(head))
        first_layer = next((index for index in chain if index in self.epilogue and index not in preprocessing), None)
        sink = set(self.nodes) - set(head)
        if first_layer is not None:
            sink.add(first_layer)
        cut = self.min_cut(preprocessing, sink, prefer="late")
        if cut is None:
            raise ModelError(
                "no tensor between the graph inputs and the first layer can be cut: none has a batch axis at dim 0 "
                "and static other dims; name the stem frontier explicitly"
            )
        return cut

    def trunk_cuts(self, stem: Cut, head: Cut) -> list[tuple[float, Cut]]:
        """Return cuts between consecutive layers of the trunk's heaviest path, each with its boundary number.

        Each boundary gets up to two cuts of equal width, with the fewest and
        with the most FLOPs before them. They differ when a side branch, such
        as a cross network beside a deep tower, can go either way.
        """
        trunk = set(head - stem)
        chain_layers = [index for index in self.heaviest_path(trunk) if index in self.epilogue]
        cuts: list[tuple[float, Cut]] = []
        previous = stem
        after_head = set(self.nodes) - set(head)
        for boundary, (layer, next_layer) in enumerate(zip(chain_layers, chain_layers[1:]), start=1):
            source = set(previous) | self.epilogue[layer]
            sink = after_head | {next_layer}
            early = self.min_cut(source, sink, prefer="early")
            if early is None or early == previous:
                continue
            late = self.min_cut(source, sink, prefer="late")
            cuts.append((boundary, early))
            if late is not None and late != early:
                cuts.append((boundary, late))
            previous = early
        return cuts

    def choose_levels(
        self, stem: Cut, head: Cut, trunk_cuts: list[tuple[float, Cut]], fixed: Mapping[int, Cut], levels: int
    ) -> list[Cut]:
        """Pick frontiers 1..L-1: as many trunk boundaries as there are (up to L-1), each near its fraction k/L.

        Dynamic programming over nested cuts, one boundary per level at most.
        The first criterion is the number of distinct cuts used. The second is
        the summed distance of each cut's trunk FLOPs fraction from k/L, plus a
        smaller term for its width. So a narrow cut at a block boundary beats a
        wide one inside a residual block at a similar depth.
        """
        # candidates: (boundary, cut); a user's cut sits between the trunk boundaries it contains and the next
        candidates: list[tuple[float, Cut]] = [(0.0, stem), *trunk_cuts]
        for cut in fixed.values():
            if cut not in (existing for _, existing in candidates):
                candidates.append((max(boundary for boundary, existing in candidates if existing <= cut) + 0.5, cut))
        candidates.append((math.inf, head))
        fractions = [self.fraction(cut, stem, head) for _, cut in candidates]
        widths = [sum(self.flow.tensors[name].width or 0 for name in self.crossing(cut)) for _, cut in candidates]
        widest = max(max(widths), 1)
        first, last = 0, len(candidates) - 1
        required = {level: next(j for j, (_, existing) in enumerate(candidates) if existing == cut) for level, cut in fixed.items()}

        # best[j] after a level: (minus the distinct cuts used, summed distance, chosen candidate per level)
        best: dict[int, tuple[int, float, tuple[int, ...]]] = {first: (0, 0.0, ())}
        for level in range(1, levels):
            step: dict[int, tuple[int, float, tuple[int, ...]]] = {}
            for j, (boundary, cut) in enumerate(candidates):
                if level in required and j != required[level]:
                    continue
                for i, (distinct, cost, path) in best.items():
                    if j != i and not (candidates[i][0] < boundary and candidates[i][1] <= cut):
                        continue
                    new = j != i and j not in (first, last)
                    distance = abs(fractions[j] - level / levels) + _WIDTH_WEIGHT * widths[j] / widest
                    entry = (distinct - int(new), cost + distance, (*path, j))
                    if j not in step or entry[:2] < step[j][:2]:
                        step[j] = entry
            if not step:
                raise ModelError(f"no frontier fits level {level} between the frontiers given")
            best = step
        chosen = min(best.values(), key=lambda entry: entry[:2])[2] if levels > 1 else ()
        return [stem, *(candidates[j][1] for j in chosen), head]


def _parse_user_frontiers(planner: _Planner, frontiers: Mapping[int, Sequence[str]], levels: int) -> dict[int, Cut]:
    cuts: dict[int, Cut] = {}
    for index, names in sorted(frontiers.items()):
        if not 0 <= index <= levels:
            raise ModelError(f"frontier index {index} is out of range: 0 is the stem frontier, {levels} the head frontier")
        cuts[index] = _user_cut(planner, index, list(names))
    ordered = sorted(cuts.items())
    for (low, low_cut), (high, high_cut) in zip(ordered, ordered[1:]):
        if not low_cut <= high_cut:
            node = planner.flow.nodes[min(low_cut - high_cut)].name
            raise ModelError(f"frontier {high} is not after frontier {low}: node {node!r} is computed before {low} but after {high}")
    return cuts


def _user_cut(planner: _Planner, index: int, names: list[str]) -> Cut:
    """Validate the tensors a user names as frontier ``index`` and return the nodes before them."""
    flow = planner.flow
    if not names:
        raise ModelError(f"frontier {index} names no tensor")

    # each tensor must exist, carry values and have a batch axis
    for name in names:
        kind = flow.tensor_class.get(name)
        if kind is None:
            raise ModelError(f"frontier {index}: tensor {name!r} not found in the graph")
        if kind not in (INPUT, DATA) or name not in planner.flow_tensors:
            raise ModelError(f"frontier {index}: tensor {name!r} is a {kind} tensor that no later node reads as data; it cannot be cut")
        if not flow.tensors[name].batched:
            shapes = flow.probe_shapes.get(name)
            raise ModelError(
                f"frontier {index}: tensor {name!r} has no batch axis at dim 0 with static other dims "
                f"(shapes at the probe batches: {shapes}); choose a [batch, ...] tensor"
            )

    # the nodes before the frontier are the ancestors of its tensors; everything they send onwards must be in it
    producers = [flow.producer[name] for name in names if name in flow.producer]
    cut = frozenset(planner.ancestors(producer for producer in producers if producer in planner.succs))
    crossing = set(planner.crossing(cut))
    missing = [name for name in planner._ordered(crossing - set(names))]
    if missing:
        name = missing[0]
        readers = [flow.nodes[reader].name for reader in planner.flow_tensors[name][1] if reader not in cut]
        read_by = f"read by node {readers[0]!r}" if readers else "a graph output"
        found = f"graph input {name!r} is" if name in flow.inputs else f"{name!r} is computed before them and"
        raise ModelError(
            f"tensors {names} do not form frontier {index}: {found} {read_by} after them; "
            f"add {', '.join(repr(item) for item in missing)}"
        )

    unused = [name for name in names if name not in crossing]
    if unused:
        raise ModelError(f"frontier {index}: tensor {unused[0]!r} is not read after the frontier; remove it")
    if set(names) & set(flow.outputs):
        raise ModelError(f"frontier {index}: a graph output cannot be a frontier tensor, because the head would be empty")
    return cut


def _tensor_spec(flow: Dataflow, name: str) -> TensorSpec:
    info = flow.tensors.get(name)
    if info is not None and info.batched and info.row_shape is not None:
        return TensorSpec(name, info.dtype, (flow.batch_dim, *info.row_shape))
    declared = {value.name: value for value in [*flow.model.graph.input, *flow.model.graph.output]}.get(name)
    if declared is not None:
        tensor_type = declared.type.tensor_type
        shape = tuple(dim.dim_param or (int(dim.dim_value) if dim.HasField("dim_value") else "?") for dim in tensor_type.shape.dim)
        return TensorSpec(name, dtype_name(tensor_type.elem_type), shape)
    return TensorSpec(name, dtype_name(flow.elem_types.get(name, 0)), ())


def _component(planner: _Planner, name: str, kind: str, level: int, nodes: Iterable[int], inputs: Iterable[str], outputs: Iterable[str]) -> Component:
    flow = planner.flow
    indices = sorted(nodes)
    return Component(
        name=name,
        kind=kind,
        level=level,
        nodes=tuple(flow.nodes[index].name for index in indices),
        inputs=tuple(_tensor_spec(flow, tensor) for tensor in inputs),
        outputs=tuple(_tensor_spec(flow, tensor) for tensor in outputs),
        params=sum(flow.params(index) for index in indices),
        flops=sum(flow.node_flops[index] for index in indices),
        ops=dict(Counter(flow.nodes[index].op_type for index in indices).most_common()),
    )


def _build(planner: _Planner, cuts: list[Cut], levels: int) -> Decomposition:
    flow = planner.flow
    stem, head = cuts[0], cuts[-1]
    frontier_names = [planner.crossing(cut) for cut in cuts]
    frontiers = tuple(
        Frontier(tuple(_tensor_spec(flow, name) for name in names), planner.fraction(cut, stem, head))
        for cut, names in zip(cuts, frontier_names)
    )
    components = [_component(planner, "stem", "stem", 0, stem, flow.inputs, frontier_names[0])]
    for level in range(1, levels + 1):
        components.append(
            _component(
                planner, f"block{level}", "block", level, cuts[level] - cuts[level - 1], frontier_names[level - 1], frontier_names[level]
            )
        )
    components.append(_component(planner, "head", "head", levels + 1, set(planner.nodes) - head, frontier_names[-1], flow.outputs))
    return Decomposition(
        levels=levels,
        components=tuple(components),
        frontiers=frontiers,
        outputs=flow.outputs,
        batch_dim=flow.batch_dim,
        params=sum(component.params for component in components),
        flops=sum(component.flops for component in components),
        dataflow=flow,
    )
