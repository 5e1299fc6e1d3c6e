"""Graph passes over ONNX models: load, validate, normalise, decompose and extract.

Every pass takes an onnx ``ModelProto`` and returns a new ``ModelProto`` or an
analysis record; no pass modifies its input. Every model a pass emits passes
``onnx.checker.check_model(full_check=True)`` and strict shape inference.
The words source, component (stem, block, head), frontier and level are
defined in the glossary of the ``akfc`` package docstring.

The order a source goes through them::

    model = load_model(path)                        # load.py: checker, external data, task output
    model, = unify_opsets([model])                  # opset.py: one opset for all sources
    source = normalize(model, "income_dcn")         # normalize.py: names, folding, logit, kind
    parts = decompose(source.model, levels=3)       # decompose.py: stem, blocks, head
    models = extract_components(source.model, parts)  # extract.py: one ONNX model per component
"""

from __future__ import annotations

from akfc.passes.batch_axis import check_batch_axis, fixed_batch_inputs, make_batch_dynamic
from akfc.passes.dataflow import Dataflow, TensorInfo, analyze
from akfc.passes.decompose import DEFAULT_LEVELS, Component, Decomposition, Frontier, TensorSpec, decompose
from akfc.passes.extract import extract_component, extract_components, run_components
from akfc.passes.flops import node_flops
from akfc.passes.id_ranges import embedding_limits, guard_ids
from akfc.passes.load import load_model, validate_model
from akfc.passes.normalize import (
    KINDS,
    NormalizedSource,
    expose_logit,
    fold_constants,
    infer_kind,
    name_nodes,
    normalize,
    prefix_names,
    prune,
    remove_identities,
    resolve_output,
)
from akfc.passes.opset import MIN_OPSET, convert_opset, default_opset, target_opset, unify_opsets
from akfc.passes.training_mode import check_inference_mode

__all__ = [
    "DEFAULT_LEVELS",
    "KINDS",
    "MIN_OPSET",
    "Component",
    "Dataflow",
    "Decomposition",
    "Frontier",
    "NormalizedSource",
    "TensorInfo",
    "TensorSpec",
    "analyze",
    "check_batch_axis",
    "check_inference_mode",
    "convert_opset",
    "decompose",
    "default_opset",
    "embedding_limits",
    "expose_logit",
    "extract_component",
    "extract_components",
    "fixed_batch_inputs",
    "fold_constants",
    "guard_ids",
    "infer_kind",
    "load_model",
    "make_batch_dynamic",
    "name_nodes",
    "node_flops",
    "normalize",
    "prefix_names",
    "prune",
    "remove_identities",
    "resolve_output",
    "run_components",
    "target_opset",
    "unify_opsets",
    "validate_model",
]
