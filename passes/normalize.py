"""Normalise a source model so that it can be decomposed and spliced next to others.

``normalize`` runs the passes below in order and returns a ``NormalizedSource``:

1. inline local functions, so the main graph contains every node;
2. ``resolve_output``: pick the task output among the graph outputs;
3. ``prune``: keep only what the task output needs (other outputs, dead nodes,
   unused inputs and initializers go);
4. ``check_inference_mode``: reject BatchNormalization and Dropout in training
   mode; with ``dynamic_batch``, ``make_batch_dynamic`` frees a batch axis the
   export fixed;
5. ``remove_identities``: drop Identity and inference-time Dropout nodes;
6. ``fold_constants``: evaluate every node whose inputs are all constant, then
   ``check_batch_axis``: reject a constant shape that fixes the batch size;
7. ``expose_logit``: find the terminal activation (Sigmoid, Softmax,
   LogSoftmax or none) and add the tensor before it as a second graph output;
8. ``name_nodes`` and ``prefix_names``: unique node names, then every name
   prefixed with the source id.

The task kind is inferred from the activation (Sigmoid: binary, Softmax:
multiclass, none: regression) unless the caller gives one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

import onnx
import onnx.compose
import onnx.inliner
import onnx.numpy_helper
import onnx_graphsurgeon as gs

from akfc.errors import ModelError
from akfc.passes._checks import check_emitted
from akfc.passes.batch_axis import check_batch_axis, make_batch_dynamic
from akfc.passes.dataflow import node_input_names, unique_name
from akfc.passes.ml_shapes import complete_ml_shapes
from akfc.passes.output_rank import add_class_axis
from akfc.passes.training_mode import check_inference_mode

__all__ = [
    "KINDS",
    "NormalizedSource",
    "expose_logit",
    "fold_constants",
    "infer_kind",
    "name_nodes",
    "normalize",
    "prefix_names",
    "prune",
    "remove_identities",
    "resolve_output",
]

logger = logging.getLogger(__name__)

KINDS = ("binary", "multiclass", "regression")
_ACTIVATIONS = {"Sigmoid": "sigmoid", "Softmax": "softmax", "LogSoftmax": "log_softmax"}
_KIND_OF_ACTIVATION = {"sigmoid": "binary", "softmax": "multiclass", "log_softmax": "multiclass"}
# Ops that only move or retype elements, so they commute with an elementwise activation.
_PASSIVE_OPS = frozenset({"Squeeze", "Unsqueeze", "Reshape", "Flatten", "Identity", "Cast"})
_ML_CLASSIFIERS = frozenset({"LinearClassifier", "SVMClassifier", "TreeEnsembleClassifier"})
_SCORE_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})
_SOURCE_ID = re.compile(r"[A-Za-z0-9_.\-]+")


@dataclass(frozen=True, eq=False)
class NormalizedSource:
    """A normalised source and what the fusion step needs to know about its task output."""

    model: onnx.ModelProto  # graph outputs: [output] or [output, logit]
    source_id: str | None  # prefix of every name, None when names were kept
    output: str  # the task output tensor
    logit: str | None  # the tensor before the terminal activation; the output itself for regression
    activation: str | None  # "sigmoid", "softmax", "log_softmax" or None
    kind: str  # task kind used downstream: "binary", "multiclass" or "regression"
    inferred_kind: str  # the kind read from the graph, before any override
    input_names: Mapping[str, str]  # graph input name -> the name in the original model

    def __repr__(self) -> str:
        return (
            f"NormalizedSource(source_id={self.source_id!r}, output={self.output!r}, logit={self.logit!r}, "
            f"activation={self.activation!r}, kind={self.kind!r}, nodes={len(self.model.graph.node)}, "
            f"inputs={list(self.input_names)})"
        )


def normalize(
    model: onnx.ModelProto,
    source_id: str | None = None,
    *,
    output: str | None = None,
    kind: str | None = None,
    origin: str = "model",
    dynamic_batch: bool = False,
) -> NormalizedSource:
    """Normalise a loaded source; the input model is not modified.

    Arguments:
        model: a model that passed ``load_model`` (and ``convert_opset``).
        source_id: prefix for every node, tensor and initializer name
            (``"{source_id}/name"``); None keeps the names.
        output: the task output, by name; see ``resolve_output``.
        kind: overrides the inferred task kind ("binary", "multiclass", "regression").
        origin: names the model in errors and logs.
        dynamic_batch: make a batch size that the graph inputs fix dynamic
            (see ``make_batch_dynamic``); without it, a fixed batch size stays.

    Returns:
        The normalised model, which passes the full checker and strict shape
        inference, with its task output, logit, activation and kind.
    """
    if kind is not None and kind not in KINDS:
        raise ModelError(f"{origin}: unknown task kind {kind!r}; choose one of {', '.join(KINDS)}")
    if source_id is not None and not _SOURCE_ID.fullmatch(source_id):
        raise ModelError(f"source id {source_id!r} of {origin} must be letters, digits, '_', '.' or '-'")

    # 1. flatten local functions
    work = onnx.inliner.inline_local_functions(model) if model.functions else _copy(model)
    original_inputs = [value.name for value in work.graph.input]

    # 2-6. task output, pruning, training mode, batch axis, identities, constants
    # skl2onnx's Scaler and friends get no shapes from ONNX inference, and pruning needs them; constant
    # folding drops value_info, so they are added again after it.
    work = complete_ml_shapes(work)
    task_output = resolve_output(work, output, origin=origin)
    work = prune(work, [task_output], origin=origin)
    check_inference_mode(work, origin=origin)
    if dynamic_batch:
        # Before folding: with a fixed batch size, folding would turn Shape(x)[0] into that number.
        work = make_batch_dynamic(work, origin=origin)
    work = remove_identities(work)
    work = complete_ml_shapes(fold_constants(work))
    check_batch_axis(work, origin=origin)

    # 7. terminal activation and logit
    work, logit, activation = expose_logit(work, task_output)
    inferred_kind = infer_kind(work, task_output, activation)

    # 7b. the fusion mixes [batch, C] outputs; a squeezed [batch] output and its logit get the class axis back
    work, renamed = add_class_axis(work, [task_output] if logit is None else [task_output, logit])
    task_output, logit = renamed[task_output], renamed[logit] if logit is not None else None
    if kind is not None and kind != inferred_kind:
        logger.info("%s: task kind %s given, overriding the inferred %s", origin, kind, inferred_kind)

    # 8. names
    work = name_nodes(work)
    input_names = {name: name for name in original_inputs if name in {value.name for value in work.graph.input}}
    if source_id is not None:
        work = prefix_names(work, source_id)
        task_output = f"{source_id}/{task_output}"
        logit = f"{source_id}/{logit}" if logit is not None else None
        input_names = {f"{source_id}/{name}": original for name, original in input_names.items()}

    checked = check_emitted(work, f"normalize of {origin}")
    logger.info(
        "%s: normalised to %d nodes; output %s, logit %s, %s task",
        origin, len(checked.graph.node), task_output, logit, kind or inferred_kind,
    )  # fmt: skip
    return NormalizedSource(
        model=checked,
        source_id=source_id,
        output=task_output,
        logit=logit,
        activation=activation,
        kind=kind or inferred_kind,
        inferred_kind=inferred_kind,
        input_names=input_names,
    )


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copied = onnx.ModelProto()
    copied.CopyFrom(model)
    return copied


def _describe_output(value: onnx.ValueInfoProto) -> str:
    value_type = value.type
    if value_type.HasField("tensor_type"):
        dims = [dim.dim_param or (str(dim.dim_value) if dim.HasField("dim_value") else "?") for dim in value_type.tensor_type.shape.dim]
        return f"{value.name} ({onnx.TensorProto.DataType.Name(value_type.tensor_type.elem_type).lower()} [{', '.join(dims)}])"
    if value_type.HasField("sequence_type"):
        return f"{value.name} (sequence)"
    return f"{value.name} (non-tensor)"


def _is_score(value: onnx.ValueInfoProto, producer: onnx.NodeProto | None) -> bool:
    if producer is not None and producer.op_type == "ZipMap":
        return True
    return value.type.HasField("tensor_type") and value.type.tensor_type.elem_type in _SCORE_TYPES


def resolve_output(model: onnx.ModelProto, output: str | None = None, *, origin: str = "model") -> str:
    """Return the tensor that contains the task's prediction; the model is not modified.

    A named output is matched exactly, or with tf2onnx's ``:0`` suffix added.
    Without a name, the only graph output is taken, else the only one with
    floating-point scores (skl2onnx's int64 label output is skipped).
    An output computed by a ZipMap (skl2onnx's sequence of maps) resolves to
    the probability tensor the ZipMap reads.
    """
    graph = model.graph
    producer = {name: node for node in graph.node for name in node.output if name}
    by_name = {value.name: value for value in graph.output}
    listing = ", ".join(_describe_output(value) for value in graph.output)

    if output is not None:
        chosen = next((name for name in (output, f"{output}:0") if name in by_name), None)
        if chosen is None:
            raise ModelError(f"{origin}: output {output!r} not found; the graph outputs are {listing}")
        if not _is_score(by_name[chosen], producer.get(chosen)):
            raise ModelError(
                f"{origin}: output {chosen!r} is not a floating-point score tensor ({_describe_output(by_name[chosen])}); "
                f"choose a probability or value output among {listing}"
            )
    elif len(graph.output) == 1:
        chosen = graph.output[0].name
    else:
        scores = [value.name for value in graph.output if _is_score(value, producer.get(value.name))]
        if len(scores) != 1:
            found = "none of them holds" if not scores else f"{len(scores)} of them hold"
            raise ModelError(
                f"{origin}: the graph has {len(graph.output)} outputs ({listing}) and {found} floating-point scores; "
                "name the task output: TASK=PATH#NAME on the akfc compile command line, output = NAME in the source's [[source]] "
                "table of a compile spec, or --output NAME for akfc inspect"
            )
        chosen = scores[0]

    node = producer.get(chosen)
    if node is not None and node.op_type == "ZipMap" and node.domain == "ai.onnx.ml":
        logger.debug("%s: output %s is a ZipMap; using its input %s", origin, chosen, node.input[0])
        return node.input[0]
    return chosen


def prune(model: onnx.ModelProto, outputs: list[str], *, origin: str = "model") -> onnx.ModelProto:
    """Return a copy whose graph outputs are exactly ``outputs``, without the nodes, inputs and initializers they do not need."""
    pruned = _copy(model)
    graph = pruned.graph
    producer = {name: node for node in graph.node for name in node.output if name}
    needed: set[str] = set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        if name in producer:
            stack.extend(node_input_names(producer[name]))

    value_types = {value.name: value for value in [*graph.input, *graph.value_info, *graph.output]}
    known_outputs = {value.name: value for value in graph.output}
    new_outputs = []
    for name in outputs:
        if name in known_outputs:
            new_outputs.append(known_outputs[name])
        elif name in value_types:
            new_outputs.append(value_types[name])
        else:
            inferred = onnx.shape_inference.infer_shapes(model)
            found = {value.name: value for value in inferred.graph.value_info}
            if name not in found:
                raise ModelError(f"{origin}: tensor {name!r} has no inferred type, so it cannot become a graph output")
            new_outputs.append(found[name])

    kept_nodes = [node for node in graph.node if any(name in needed for name in node.output)]
    dropped_inputs = [value.name for value in graph.input if value.name not in needed]
    if dropped_inputs:
        logger.info("%s: graph inputs %s do not reach the task output; dropped", origin, ", ".join(dropped_inputs))
    _replace(graph.output, new_outputs)
    _replace(graph.node, kept_nodes)
    _replace(graph.input, [value for value in graph.input if value.name in needed])
    _replace(graph.initializer, [tensor for tensor in graph.initializer if tensor.name in needed])
    _replace(graph.sparse_initializer, [tensor for tensor in graph.sparse_initializer if tensor.values.name in needed])
    _replace(graph.value_info, [value for value in graph.value_info if value.name in needed])
    check_emitted(pruned, f"prune of {origin}")
    return pruned


def _replace(field, items) -> None:  # noqa: ANN001 -- a protobuf repeated field of any message type
    items = list(items)
    del field[:]
    field.extend(items)


def _is_inference_dropout(node: onnx.NodeProto, constants: Mapping[str, onnx.TensorProto], used: set[str]) -> bool:
    if node.op_type != "Dropout" or node.domain not in ("", "ai.onnx"):
        return False
    if len(node.output) > 1 and node.output[1] and node.output[1] in used:
        return False
    if len(node.input) < 3 or not node.input[2]:
        return True
    training = constants.get(node.input[2])
    return training is not None and not bool(onnx.numpy_helper.to_array(training))


def remove_identities(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy without Identity and inference-time Dropout nodes; graph inputs, outputs and values are unchanged.

    A node whose output is a graph output hands that name to the tensor it
    copies, so graph output names survive. Such a node stays when the copied
    tensor is a graph input, an initializer or another graph output.
    """
    result = _copy(model)
    graph = result.graph
    graph_outputs = {value.name for value in graph.output}
    fixed = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer} | graph_outputs
    constants = {tensor.name: tensor for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((attribute.t for attribute in node.attribute if attribute.name == "value"), None)
            if value is not None:
                constants[node.output[0]] = value
    used = {name for node in graph.node for name in node_input_names(node)} | graph_outputs

    rename: dict[str, str] = {}

    def resolve(name: str) -> str:
        while name in rename:
            name = rename[name]
        return name

    removed = []
    for node in graph.node:
        removable = (node.op_type == "Identity" and node.domain in ("", "ai.onnx")) or _is_inference_dropout(node, constants, used)
        if not removable:
            continue
        source, target = resolve(node.input[0]), node.output[0]
        if target in graph_outputs:
            if source in fixed:
                continue
            rename[source] = target
        else:
            rename[target] = source
        removed.append(node)

    if not removed:
        check_emitted(result, "remove_identities")
        return result
    removed_ids = {id(node) for node in removed}
    remaining = [node for node in graph.node if id(node) not in removed_ids]
    for node in remaining:
        _rename_node(node, resolve)
    _replace(graph.node, remaining)
    renamed_values = []
    for value in graph.value_info:
        if value.name not in rename:
            renamed_values.append(value)
    _replace(graph.value_info, renamed_values)
    logger.info("removed %d Identity/Dropout nodes", len(removed))
    check_emitted(result, "remove_identities")
    return result


def _rename_node(node: onnx.NodeProto, resolve) -> None:  # noqa: ANN001 -- resolve: Callable[[str], str]
    for position, name in enumerate(node.input):
        if name:
            node.input[position] = resolve(name)
    for position, name in enumerate(node.output):
        if name:
            node.output[position] = resolve(name)
    for attribute in node.attribute:
        subgraphs = [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
        for subgraph in subgraphs:
            local = {value.name for value in subgraph.input} | {tensor.name for tensor in subgraph.initializer}
            local |= {name for inner in subgraph.node for name in inner.output}
            for inner in subgraph.node:
                _rename_node(inner, lambda name, local=local: name if name in local else resolve(name))
            for value in subgraph.output:
                if value.name not in local:
                    value.name = resolve(value.name)


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy in which every node computable from constants (and static shapes) is an initializer.

    Graph inputs, outputs and the values the graph computes are unchanged.
    onnx-graphsurgeon does the folding with onnxruntime; static shapes from
    ONNX shape inference let it fold Shape ops of tensors whose shape is known.
    """
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = gs.import_onnx(inferred)
    before = len(graph.nodes)
    graph.fold_constants(fold_shapes=True).cleanup().toposort()
    folded = gs.export_onnx(graph)

    # onnx-graphsurgeon rebuilds the model; keep the source's model-level fields and drop its guessed value_info.
    for field_name in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(folded, field_name, getattr(model, field_name))
    _replace(folded.metadata_props, model.metadata_props)
    _replace(folded.opset_import, model.opset_import)
    del folded.graph.value_info[:]
    logger.info("folded constants: %d -> %d nodes", before, len(folded.graph.node))
    check_emitted(folded, "fold_constants")
    return folded


def expose_logit(model: onnx.ModelProto, output: str) -> tuple[onnx.ModelProto, str | None, str | None]:
    """Find the terminal activation of ``output`` and add the tensor before it as a second graph output.

    Elementwise activations commute with ops that only move elements, so when
    Squeeze/Reshape-like ops follow the activation they are repeated on the
    logit, which then has the output's shape. Returns (model copy, logit,
    activation): the logit is the output itself when there is no activation,
    and None for an ai.onnx.ml classifier's probabilities.
    """
    result = _copy(model)
    graph = result.graph
    producer = {name: node for node in graph.node for name in node.output if name}
    initializers = {tensor.name for tensor in graph.initializer}

    # walk back over element-moving ops to the activation
    passive: list[onnx.NodeProto] = []
    tensor = output
    while (
        tensor in producer
        and producer[tensor].op_type in _PASSIVE_OPS
        and producer[tensor].domain in ("", "ai.onnx")
        and all(name in initializers or not name for name in producer[tensor].input[1:])
    ):
        passive.append(producer[tensor])
        tensor = producer[tensor].input[0]
    node = producer.get(tensor)
    if node is None or node.domain not in ("", "ai.onnx") or node.op_type not in _ACTIVATIONS:
        source = producer.get(output)
        check_emitted(result, "expose_logit")
        if source is not None and source.domain == "ai.onnx.ml" and source.op_type in _ML_CLASSIFIERS:
            return result, None, None
        return result, output, None
    activation = _ACTIVATIONS[node.op_type]
    logit = node.input[0]

    # repeat the element-moving ops on the logit
    tensor_names = set(producer) | {value.name for value in graph.input} | initializers
    node_names = {existing.name for existing in graph.node}
    for step in reversed(passive):
        copy = onnx.NodeProto()
        copy.CopyFrom(step)
        copy.input[0] = logit
        copy.output[0] = unique_name(f"{step.output[0]}_logit", tensor_names)
        copy.name = unique_name(f"{step.name or step.op_type}_logit", node_names)
        del copy.output[1:]
        graph.node.append(copy)
        logit = copy.output[0]

    if logit not in {value.name for value in graph.output}:
        graph.output.append(_inferred_value_info(result, logit))
    check_emitted(result, "expose_logit")
    return result, logit, activation




def _inferred_value_info(model: onnx.ModelProto, tensor: str) -> onnx.ValueInfoProto:
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    for value in inferred.graph.value_info:
        if value.name == tensor and value.type.tensor_type.elem_type:
            return value
    raise ModelError(f"cannot infer the type of tensor {tensor!r}, the input of the terminal activation")


def infer_kind(model: onnx.ModelProto, output: str, activation: str | None) -> str:
    """Return the task kind the graph implies: Sigmoid binary, Softmax multiclass, a classifier by its class count, else regression."""
    if activation is not None:
        return _KIND_OF_ACTIVATION[activation]
    producer = next((node for node in model.graph.node if output in node.output), None)
    if producer is not None and producer.domain == "ai.onnx.ml" and producer.op_type in _ML_CLASSIFIERS:
        classes = max(
            (len(attribute.ints) or len(attribute.strings) for attribute in producer.attribute if attribute.name.startswith("classlabels")),
            default=0,
        )
        return "binary" if classes == 2 else "multiclass"
    return "regression"


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy in which every node of the main graph has a unique, non-empty name."""
    result = _copy(model)
    taken: set[str] = set()
    for index, node in enumerate(result.graph.node):
        base = node.name or f"{node.op_type}_{index}"
        node.name = unique_name(base, taken)
    check_emitted(result, "name_nodes")
    return result


def prefix_names(model: onnx.ModelProto, source_id: str) -> onnx.ModelProto:
    """Return a copy in which every node, tensor, initializer and value_info name starts with ``{source_id}/``."""
    prefixed = onnx.compose.add_prefix(model, f"{source_id}/")
    check_emitted(prefixed, "prefix_names")
    return prefixed
