"""The compile pipeline behind `akfc compile` and `akfc.compile()`: sources and data in, one verified multi-task ONNX graph out.

The steps, each in its own module:

1. load, validate and bring the sources to one opset   (akfc.passes.load, .opset)
2. normalise and decompose each source                (akfc.passes.normalize, .decompose)
3. run the stems once per split in onnxruntime        (akfc.runtime)
4. lower blocks and heads to torch                    (akfc.lower)
5. build and train the AKF fusion model               (akfc.fusion, akfc.train)
6. recompile into one ONNX graph, verify, write       (akfc.recompile)

Sources from other exporters need three allowances here. A skl2onnx binary
classifier ends in Concat(1 - Sigmoid(z), Sigmoid(z)); its head is cut at z,
which becomes its logit. A classifier whose probabilities come from an
ai.onnx.ml op (a tree ensemble) has no logit; its probabilities join the
mixture as they are. A source without an interior frontier (a tree ensemble
again) is *head-only*: it runs whole in onnxruntime with the stems, and only
its task's mixture reads its output.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pyarrow as pa
import torch

from akfc import __version__
from akfc.atomic import make_temporary_folder, remove_stale_temporaries, save_model_atomic
from akfc.data import (
    InputSignature,
    bind_input,
    check_id_range,
    check_label_classes,
    check_same_columns,
    fill_missing,
    fill_values,
    read_table,
    task_labels,
)
from akfc.errors import DataError, ModelError, SpecError
from akfc.fusion import FusedModel, FusionConfig, IdentityBlock, SourceComponents
from akfc.lower import lower, lowering_info
from akfc.metrics import task_metrics
from akfc.passes.decompose import Decomposition, decompose
from akfc.passes.extract import extract_component
from akfc.passes.id_ranges import embedding_limits, guard_ids
from akfc.passes.load import load_model
from akfc.passes.normalize import NormalizedSource, normalize, prune
from akfc.passes.opset import convert_opset, target_opset
from akfc.recompile import WIDENS_TO, FusedInput, SourceLayout, recompile
from akfc.report import draw_report, json_text, markdown_text
from akfc.runtime import make_session, run_batched
from akfc.serving import FusedMetadata, SourceRecord, file_sha256, input_signatures
from akfc.spec import CompileSpec, SourceSpec, load_spec, merge_flags, parse_source_argument
from akfc.train import EpochSummary, TrainConfig, TrainingSet, TrainResult, predict, train

__all__ = ["CompilePlan", "CompileResult", "PARITY_TOLERANCE", "checkpoint_folder", "compile", "plan"]

logger = logging.getLogger(__name__)

# onnxruntime against torch, max abs difference of any task output on the validation split.
PARITY_TOLERANCE = 1e-5
# The fused model before training against the sources run in onnxruntime.
INITIAL_TOLERANCE = 1e-5
_EXPORT_ROWS = 8  # rows of example frontiers the AKF parts are exported with
FUSED_MIN_OPSET = 18  # the lowest opset the torch exporter writes without a conversion step


@dataclass
class _Source:
    """One source on its way through the pipeline."""

    spec: SourceSpec
    sha256: str
    normalized: NormalizedSource
    decomposition: Decomposition
    components: list[onnx.ModelProto]  # stem, block 1..L, head (the head ends at head_output); only the stem when head-only
    head_output: str
    output_mode: str  # "logit", "probability" or "value": the content of head_output
    kind: str  # the task kind this source implies (or the spec's)
    head_only: bool  # no interior frontier: the stem is the whole source and ends at head_output
    stem_outputs: list[str]  # tensors the stem produces, cached per split
    graph_output: str  # the source file's own graph output that contains the task's prediction


class _Stopwatch:
    """Wall time of consecutive pipeline stages: each `lap` closes the stage that started at the previous one."""

    def __init__(self, laps: dict[str, float] | None = None) -> None:
        self.laps = {} if laps is None else laps
        self._started = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = now - self._started
        self._started = now
        logger.info("stage %s took %.2f s", stage, self.laps[stage])


@dataclass
class CompileResult:
    """Result of a compile: the written files, the report and the trained model."""

    output: Path
    report: dict[str, Any]
    metadata: FusedMetadata
    training: TrainResult
    model: FusedModel  # the trained torch model the graph was verified against
    valid_predictions: dict[str, np.ndarray]  # the torch model's task outputs on the validation split
    parity: dict[str, float]  # per task: max abs difference of onnxruntime from torch on the validation split
    files: list[Path] = field(default_factory=list)


def compile(  # noqa: A001 -- the public name mirrors the `akfc compile` command
    spec: CompileSpec | str | os.PathLike[str] | None = None,
    *,
    sources: Sequence[str | SourceSpec] = (),
    on_epoch: Callable[[EpochSummary, str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    resume: bool = False,
    **options: Any,
) -> CompileResult:
    """Fuse the spec's sources into one multi-task ONNX graph and write it with its report.

    Arguments:
        spec: a `CompileSpec`, the path of a TOML spec, or None to build one from
            `sources` and `options` alone.
        sources: more sources, as "TASK=PATH" strings or `SourceSpec`s.
        on_epoch: called with each epoch's summary and its printable line.
        progress: called as progress(batches_done, batches_total) during each epoch.
        resume: continue an interrupted compile from its last checkpoint.
        options: `CompileSpec` fields that override the spec (train, valid,
            test, output, levels, width, heads, epochs, lr, seed, force, ...).

    Returns:
        The written output path, the report (JSON shape of report.json) and the metadata.
    """
    if spec is None:
        spec = CompileSpec(sources=[], tasks={})
    elif not isinstance(spec, CompileSpec):
        spec = load_spec(spec)
    extra = [parse_source_argument(s) if isinstance(s, str) else s for s in sources]
    paths = {key: Path(value) for key, value in options.items() if key in ("train", "valid", "test", "output") and value is not None}
    spec = merge_flags(spec, **{**options, **paths})
    spec.sources = [*spec.sources, *extra]
    spec.validate()
    output = Path(spec.output)
    _check_output(spec, output)
    device = _torch_device(spec.device)

    output.parent.mkdir(parents=True, exist_ok=True)
    for target in (output, *_report_paths(output)):
        remove_stale_temporaries(target)
    workdir = make_temporary_folder(output)
    try:
        fusion = plan(spec, workdir)
        clock = _Stopwatch(fusion.timings)
        sources, kinds, tables, sets, model = fusion.sources, fusion.kinds, fusion.tables, fusion.sets, fusion.model
        config = TrainConfig(
            epochs=spec.epochs, patience=spec.patience, batch_size=spec.batch_size, lr=spec.lr,
            weight_decay=spec.weight_decay, seed=spec.seed,
        )  # fmt: skip
        fingerprint = {
            "sources": {s.spec.name: s.sha256 for s in sources},
            "data": {split: file_sha256(path) for split, (path, _) in tables.items() if split in ("train", "valid")},
            "levels": spec.levels, "width": spec.width, "heads": spec.heads, "dropout": spec.dropout,
            "train_components": sorted(spec.train_components),
        }  # fmt: skip
        training = train(
            model, kinds, sets["train"], sets["valid"], config, checkpoint_folder(output),
            resume=resume, fingerprint=fingerprint, device=device, on_epoch=on_epoch, progress=progress,
        )  # fmt: skip
        model.to("cpu").eval()
        clock.lap("training")

        # 6. recompile, verify, report, write
        fused = _recompile(model, sources, fusion.fused_inputs, kinds, sets["valid"])
        # Guarded before the parity check, so that the check covers the guard.
        guarded = embedding_limits(fused) if spec.guard_ids else {}
        if guarded:
            fused = guard_ids(fused, namespace="akf/guard")
        clock.lap("recompile")
        torch_valid = predict(model, sets["valid"])
        parity = _verify_parity(fused, tables["valid"], torch_valid, kinds)
        clock.lap("parity")
        report = _report(model, fused, sources, kinds, tables, sets, training)
        if spec.fill:
            report["fill"] = {"values": fusion.fill, "imputed": fusion.imputed}
        # NOTE: report.json is written inside the "write" stage, so the file lacks that stage; the returned report has it.
        report["timings_s"] = clock.laps
        clock.lap("report")
        metadata = FusedMetadata(
            tasks={
                task: {
                    "kind": kind,
                    "label": spec.tasks[task].label_column,
                    "output": task,
                    "classes": _source_classes(sources, task) if kind == "multiclass" else None,
                }
                for task, kind in kinds.items()
            },
            sources=[
                SourceRecord(s.spec.name, s.spec.task, Path(s.spec.path).name, s.sha256, s.graph_output, _bindings(s))
                for s in sources
            ],
            levels=spec.levels,
            version=__version__,
            fusion={"width": spec.width, "heads": spec.heads, "dropout": spec.dropout, "best_epoch": training.best_epoch},
            metrics={split: {task: entry["fused"] for task, entry in block["tasks"].items()} for split, block in report["splits"].items()},
            fill=fusion.fill,
            guard_ids=guarded,
        )
        for key, value in metadata.to_props().items():
            fused.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
        files = _write(output, fused, report, spec.external_data)
        clock.lap("write")
        logger.info("wrote %s in %.1f s", output, sum(clock.laps.values()))
        return CompileResult(output, report, metadata, training, model, torch_valid, parity, files)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class CompilePlan:
    """Everything before training: prepared sources, data, stem caches and the untrained fused model."""

    sources: list[_Source]
    kinds: dict[str, str]  # task -> kind
    tables: dict[str, tuple[Path, pa.Table]]  # split -> (file, table)
    fused_inputs: list[FusedInput]
    sets: dict[str, TrainingSet]  # split -> cached stem outputs and labels
    model: FusedModel
    timings: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds, in pipeline order
    fill: dict[str, float | int] = field(default_factory=dict)  # column -> value imputed for missing values (--fill)
    imputed: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> column -> values imputed (--fill)


def plan(spec: CompileSpec, workdir: str | os.PathLike[str]) -> CompilePlan:
    """Prepare a compile up to training; the untrained model is checked to equal its sources.

    Arguments:
        spec: a validated spec.
        workdir: folder for stem caches that exceed the memory budget.
    """
    clock = _Stopwatch()

    # 1-2. sources: load, one opset, normalise, decompose, extract
    sources = _prepare_sources(spec)
    kinds = _task_kinds(spec, sources)
    clock.lap("load_normalize")

    # 3. data: tables, fused inputs, stem caches, labels
    tables = {split: (path, read_table(path)) for split, path in (("train", spec.train), ("valid", spec.valid), ("test", spec.test)) if path}
    if "train" not in tables or "valid" not in tables:
        raise SpecError("compile needs a train and a valid table; pass --train and --valid (or [data] in the spec)")
    fused_inputs = _fused_inputs(sources, tables["train"][1], str(tables["train"][0]))
    label_columns = [spec.tasks[task].label_column for task in kinds]
    check_same_columns({str(path): table for path, table in tables.values()}, [i.column for i in fused_inputs] + label_columns)
    fill: dict[str, float | int] = {}
    imputed: dict[str, dict[str, int]] = {}
    if spec.fill:
        fill, imputed, tables = _fill_tables(sources, spec, label_columns, tables)
    clock.lap("data")
    sets = {split: _training_set(sources, kinds, spec, table, str(path), Path(workdir)) for split, (path, table) in tables.items()}
    for split in ("valid", "test"):
        if split in tables:
            for task, kind in kinds.items():
                classes = _source_classes(sources, task) if kind == "multiclass" else None
                labels = sets[split].labels[task].numpy()
                check_label_classes(labels, spec.tasks[task].label_column, kind, str(tables[split][0]), classes, task=task)
    clock.lap("stems")

    # 4. lowering
    components = [_lower_source(source, spec) for source in sources]
    clock.lap("lowering")

    # 5. the fused model; it must start equal to the sources
    if all(source.head_only for source in sources):
        raise ModelError(
            "every source is head-only (none has a frontier inside it, e.g. only tree ensembles), so there is nothing to fuse; "
            "add a source with layers, such as a neural network"
        )
    torch.manual_seed(spec.seed)
    model = FusedModel(components, kinds, FusionConfig(width=spec.width, heads=spec.heads, dropout=spec.dropout))
    _check_initial_equality(model, sources, kinds, tables["valid"], sets["valid"])
    clock.lap("initial_equality")
    return CompilePlan(sources, kinds, tables, fused_inputs, sets, model, clock.laps, fill=fill, imputed=imputed)


def _torch_device(device: str) -> torch.device:
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SpecError("device 'cuda' was requested but torch sees no CUDA device; use --device cpu")
    return torch.device("cuda")


def _check_output(spec: CompileSpec, output: Path) -> None:
    """Reject an output that would overwrite an input, or an existing file without --force."""
    resolved = output.resolve()
    inputs = [Path(s.path) for s in spec.sources] + [p for p in (spec.train, spec.valid, spec.test) if p]
    for path in inputs:
        if Path(path).resolve() == resolved:
            raise SpecError(f"output {output} is also an input; choose another output path with -o")
    for path in (output, *_report_paths(output)):
        if path.exists() and not spec.force:
            raise SpecError(f"output {path} exists; pass --force to overwrite it, or choose another folder with -o")
    if output.parent.exists() and not output.parent.is_dir():
        raise SpecError(f"output folder {output.parent} is not a folder; choose another path with -o")


def _prepare_sources(spec: CompileSpec) -> list[_Source]:
    """Load, unify opsets, normalise, decompose and extract every source."""
    loaded, hashes = [], []
    seen: dict[str, SourceSpec] = {}
    for source in spec.sources:
        digest = file_sha256(source.path) if Path(source.path).is_file() else ""
        if digest and digest in seen:
            other = seen[digest]
            same = "" if Path(other.path).resolve() == Path(source.path).resolve() else f" (same content as {other.path})"
            if other.task == source.task:
                raise SpecError(
                    f"source {source.path} is given twice for task {source.task!r}{same}; a second copy adds nothing to the "
                    "task's mixture, so remove one [[source]] entry or TASK=PATH argument"
                )
            logger.warning("source %s is the same file as %s; it serves tasks %s and %s", source.path, other.path, other.task, source.task)
        seen[digest] = source
        loaded.append(load_model(source.path, output=source.output))
        hashes.append(digest)
    # The fusion layers are exported at the common opset too, and the torch exporter's conversion below
    # opset 18 leaves opset-18 attributes behind (noop_with_empty_axes on ReduceLogSumExp, torch 2.13).
    opset = max(target_opset(loaded), FUSED_MIN_OPSET)
    logger.info("common opset %d", opset)
    unified = [convert_opset(model, opset, origin=str(source.path)) for model, source in zip(loaded, spec.sources)]

    prepared = []
    for source, model, digest in zip(spec.sources, unified, hashes):
        origin = str(source.path)
        normalized = normalize(model, source.name, output=source.output, kind=spec.tasks[source.task].kind, origin=origin, dynamic_batch=True)
        frontiers = _user_frontiers(normalized.model, source) if source.boundaries else None
        try:
            decomposition = decompose(normalized.model, levels=spec.levels, frontiers=frontiers)
        except ModelError as error:
            # decompose receives a model, not a file, so its messages lack the source path.
            raise ModelError(f"{origin}: {error}") from None
        head_output, mode, kind = _task_output(normalized, spec.tasks[source.task].kind)
        head_only = all(component.identity for component in decomposition.components[:-1])
        if head_only:
            logger.info("%s: no interior frontier; it joins task %s as a head-only source", origin, source.task)
            components = [prune(normalized.model, [head_output], origin=origin)]
            stem_outputs = [head_output]
        else:
            components = [extract_component(normalized.model, decomposition, c) for c in decomposition.components]
            components[-1] = prune(components[-1], [head_output], origin=origin)
            stem_outputs = [t.name for t in decomposition.stem.outputs]
        logger.info("%s: %r", origin, decomposition)
        graph_output = _graph_output(model, normalized.output[len(source.name) + 1 :])
        prepared.append(_Source(source, digest, normalized, decomposition, components, head_output, mode, kind, head_only, stem_outputs, graph_output))
    return prepared


def _user_frontiers(model: onnx.ModelProto, source: SourceSpec) -> dict[int, list[str]]:
    """Map the spec's boundary tensors to the normalised graph, whose names carry the source id as a prefix.

    A boundary may name a tensor as the source file does (as `akfc inspect` shows it) or with the prefix.
    """
    names = {name for node in model.graph.node for name in node.output} | {value.name for value in model.graph.input}
    frontiers = {}
    for index, boundary in enumerate(source.boundaries or []):
        frontiers[index] = [f"{source.name}/{name}" if f"{source.name}/{name}" in names else name for name in boundary]
    return frontiers


# ai.onnx.ml ops whose second output contains class probabilities.
_ML_CLASSIFIERS = frozenset({"LinearClassifier", "SVMClassifier", "TreeEnsembleClassifier"})


def _is_constant_one(model: onnx.ModelProto, name: str) -> bool:
    tensor = next((t for t in model.graph.initializer if t.name == name), None)
    return tensor is not None and bool(np.all(onnx.numpy_helper.to_array(tensor) == 1))


def _sigmoid_pair_logit(model: onnx.ModelProto, output: str) -> str | None:
    """Return z when `output` is Concat(1 - Sigmoid(z), Sigmoid(z)) on the last axis (skl2onnx's binary MLP), else None."""
    producer = {name: node for node in model.graph.node for name in node.output}
    concat = producer.get(output)
    if concat is None or concat.op_type != "Concat" or len(concat.input) != 2:
        return None
    if next((a.i for a in concat.attribute if a.name == "axis"), None) not in (1, -1):
        return None
    negative, positive = producer.get(concat.input[0]), producer.get(concat.input[1])
    if positive is None or positive.op_type != "Sigmoid" or negative is None or negative.op_type != "Sub":
        return None
    if negative.input[1] != concat.input[1] or not _is_constant_one(model, negative.input[0]):
        return None
    return positive.input[0]


def _classifier_classes(model: onnx.ModelProto, output: str) -> int | None:
    """Return the class count when `output` is an ai.onnx.ml classifier's probabilities, passed through Cast or a product with one."""
    producer = {name: node for node in model.graph.node for name in node.output}
    tensor = output
    while (node := producer.get(tensor)) is not None:
        if node.domain == "ai.onnx.ml" and node.op_type in _ML_CLASSIFIERS and len(node.output) > 1 and node.output[1] == tensor:
            labels = [len(a.ints) or len(a.strings) for a in node.attribute if a.name.startswith("classlabels")]
            return max(labels, default=0) or None
        if node.op_type in ("Identity", "Cast") or (node.op_type in ("Mul", "Div") and _is_constant_one(model, node.input[1])):
            tensor = node.input[0]
            continue
        return None
    return None


def _task_output(normalized: NormalizedSource, kind: str | None) -> tuple[str, str, str]:
    """Return the tensor the source's head ends at, its content ("logit", "probability" or "value") and the task kind."""
    # NOTE: expose_logit leaves both cases below as regression with the output as its own logit; they are recognised
    # here until that pass handles them.
    logit = _sigmoid_pair_logit(normalized.model, normalized.output)
    if logit is not None:
        return logit, "logit", kind or "binary"
    classes = _classifier_classes(normalized.model, normalized.output)
    if classes is not None:
        return normalized.output, "probability", kind or ("binary" if classes == 2 else "multiclass")
    if normalized.kind == "regression":
        return normalized.output, "value", normalized.kind
    if normalized.logit is None:
        return normalized.output, "probability", normalized.kind
    return normalized.logit, "logit", normalized.kind


def _graph_output(model: onnx.ModelProto, tensor: str) -> str:
    """Name the model's graph output that contains `tensor`: itself, or the ZipMap that reads it."""
    outputs = {value.name for value in model.graph.output}
    if tensor in outputs:
        return tensor
    for node in model.graph.node:
        if node.op_type == "ZipMap" and node.input[0] == tensor and node.output[0] in outputs:
            return node.output[0]
    return tensor


def _task_kinds(spec: CompileSpec, sources: list[_Source]) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for task in spec.tasks:
        found = {s.spec.name: s.kind for s in sources if s.spec.task == task}
        if len(set(found.values())) > 1:
            listing = ", ".join(f"{name}: {kind}" for name, kind in found.items())
            raise SpecError(f"the sources of task {task!r} disagree on its kind ({listing}); set kind in [task.{task}]")
        kinds[task] = next(iter(found.values()))
        if kinds[task] != "multiclass":
            continue
        for source in (s for s in sources if s.spec.task == task):
            if _output_width(source) < 2:
                activation = source.normalized.activation or "no activation"
                raise SpecError(
                    f"task {task!r} is set to multiclass, but the head of source {source.spec.name!r} ({source.spec.path}) "
                    f"has 1 output ({activation}), so the task can be binary or regression, not multiclass; "
                    f"set kind = \"binary\" or \"regression\" (--kind {task}=binary), or leave it out to infer it from the head"
                )
    return kinds


def _output_width(source: _Source) -> int:
    """Return the width of the source's task output: its class count, or 1 for a single probability, logit or value."""
    output = next(t for t in source.decomposition.head.outputs if t.name == source.normalized.output)
    return int(output.shape[-1]) if len(output.shape) > 1 else 1


def _bindings(source: _Source) -> dict[str, str | list[str]]:
    """Map the source's original graph input names to the data column(s) they read."""
    names = source.normalized.input_names.values()
    return {name: source.spec.inputs.get(name, name) for name in names}


def _fused_inputs(sources: list[_Source], table: pa.Table, file: str) -> list[FusedInput]:
    """Decide the fused graph's inputs: one [batch] tensor per bound column.

    A column read whole by some source takes that reader's type. When such
    readers differ, the type that every other reader's type widens from
    without loss wins (int32 ids feed int64 readers through a Cast); when
    there is none, a ModelError names two readers. A column only packed into
    [batch, F] inputs takes the packed input's type.
    Packed readers get a Cast inside the graph.
    """
    chosen: dict[str, FusedInput] = {}
    packed: dict[str, FusedInput] = {}
    readers: dict[str, list[tuple[_Source, str, InputSignature]]] = {}
    for source in sources:
        for signature in input_signatures(source.components[0]):
            original = source.normalized.input_names[signature.name]
            binding = source.spec.inputs.get(original, original)
            if isinstance(binding, list):
                for column in binding:
                    packed.setdefault(column, FusedInput(column, signature.dtype, (signature.shape[0],)))
                continue
            if binding not in table.column_names:
                raise DataError(
                    f"source {source.spec.name!r} reads graph input {original!r} from column {binding!r}, "
                    f"which {file} lacks; add the column or bind the input with inputs = {{ {original} = \"COLUMN\" }}"
                )
            _check_one_value_per_row(source, original, signature, binding, readers.get(binding, []))
            readers.setdefault(binding, []).append((source, original, signature))
    for column, column_readers in readers.items():
        # One value per row: a source that reads [batch, 1] gets it through an Unsqueeze.
        batch = column_readers[0][2].shape[0]
        chosen[column] = FusedInput(column, _column_dtype(column, column_readers, table, file), (batch,))
    for column, fused in packed.items():
        chosen.setdefault(column, fused)
    return list(chosen.values())


def _shape_text(shape: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if dim is None else str(dim) for dim in shape) + "]"


def _check_one_value_per_row(
    source: _Source, original: str, signature: InputSignature, column: str, others: Sequence[tuple[_Source, str, InputSignature]]
) -> None:
    """Raise unless a graph input bound to one column takes one value per row: shape [batch] or [batch, 1]."""
    shape = signature.shape
    if len(shape) == 1 or (len(shape) == 2 and not (isinstance(shape[1], int) and shape[1] != 1)):
        return
    also = ""
    if others:
        other, other_input, other_signature = others[0]
        also = f" (source {other.spec.name!r} reads it through {other_input!r} as {other_signature.dtype} {_shape_text(other_signature.shape)})"
    width = f"{shape[1]} " if len(shape) == 2 else ""
    raise DataError(
        f"source {source.spec.name!r} ({source.spec.path}) reads column {column!r} through graph input {original!r} of shape "
        f"{_shape_text(shape)}, but a column holds one value per row{also}; bind the input to an ordered list of {width}columns "
        f"with inputs = {{ {original} = [\"COLUMN\", ...] }} in its [[source]] table"
    )


def _column_dtype(column: str, readers: Sequence[tuple[_Source, str, InputSignature]], table: pa.Table, file: str) -> np.dtype:
    """Return the type a column is fed as: the reader's type from which every other reader's type widens without loss.

    When there is none, a reader that the data itself cannot feed (floats with
    fractions for an integer input) raises its DataError first, because that
    error names the row. Otherwise a ModelError names two readers whose types
    conflict.
    """
    dtypes = list(dict.fromkeys(signature.dtype for _, _, signature in readers))
    _reject_mixed_float_precisions(column, readers)
    for candidate in dtypes:
        if all(dtype == candidate or dtype in WIDENS_TO.get(candidate, set()) for dtype in dtypes):
            return candidate
    if not table.column(column).null_count:  # empty values are filled later (--fill) or reported by the binding
        for _, _, signature in readers:
            bind_input(table, signature, column, file)

    def convertible(a: np.dtype, b: np.dtype) -> bool:
        return a == b or b in WIDENS_TO.get(a, set()) or a in WIDENS_TO.get(b, set())

    pairs = [(x, y) for i, x in enumerate(readers) for y in readers[i + 1 :] if not convertible(x[2].dtype, y[2].dtype)]
    (first, first_input, first_signature), (second, second_input, second_signature) = pairs[0] if pairs else (readers[0], readers[-1])
    readers_text = _readers_text(column, first, second)
    raise ModelError(
        f"{readers_text}: graph input {first_input!r} as {first_signature.dtype} and graph input {second_input!r} as "
        f"{second_signature.dtype}. The fused graph has one input per column, and neither type converts to the other "
        "without loss. Re-export one model with the other's input type, or bind one input to another column with "
        f"inputs = {{ {second_input} = \"COLUMN\" }} in its [[source]] table"
    )


def _readers_text(column: str, first: _Source, second: _Source) -> str:
    if first is second:
        return f"source {first.spec.name!r} ({first.spec.path}) reads column {column!r} through two graph inputs"
    return f"sources {first.spec.name!r} ({first.spec.path}) and {second.spec.name!r} ({second.spec.path}) both read column {column!r}"


def _reject_mixed_float_precisions(column: str, readers: Sequence[tuple[_Source, str, InputSignature]]) -> None:
    """Raise when readers take a column as floats of different precisions.

    Integer ids widen exactly, so the narrowest integer type can feed every
    reader. Floats cannot: feeding float16 would round the values a float32
    reader receives. Feeding float32 to a float16 reader rounds float64 data
    twice, while the reader's own binding rounds once.
    """
    floats: dict[np.dtype, tuple[_Source, str, InputSignature]] = {}
    for reader in readers:
        if reader[2].dtype.kind == "f":
            floats.setdefault(reader[2].dtype, reader)
    if len(floats) < 2:
        return
    (first, first_input, first_signature), (second, second_input, second_signature) = list(floats.values())[:2]
    readers_text = _readers_text(column, first, second)
    raise ModelError(
        f"{readers_text}: graph input {first_input!r} as {first_signature.dtype} and graph input {second_input!r} as "
        f"{second_signature.dtype}. The fused graph has one input per column, and no single float type gives both sources "
        "the values they get alone. Re-export one model with the other's input type, or bind one input to a copy of the "
        f"column with inputs = {{ {second_input} = \"COLUMN\" }} in its [[source]] table"
    )


def _fill_tables(
    sources: list[_Source], spec: CompileSpec, label_columns: Sequence[str], tables: Mapping[str, tuple[Path, pa.Table]]
) -> tuple[dict[str, float | int], dict[str, dict[str, int]], dict[str, tuple[Path, pa.Table]]]:
    """Impute missing feature values (--fill); return the fill values, the counts per split and column, and the new tables.

    A column that only float graph inputs read gets its train mean; one that
    only embedding-id inputs read gets the unknown id. Columns read as text or
    as other integers, columns with mixed readers, and label columns are not
    imputed, so their missing values stay errors.
    """
    roles: dict[str, set[str]] = {}
    for source in sources:
        stem = source.components[0]
        limits = embedding_limits(stem)
        for signature in input_signatures(stem):
            original = source.normalized.input_names[signature.name]
            binding = source.spec.inputs.get(original, original)
            if signature.dtype.kind == "f":
                role = "float"
            elif signature.name in limits:
                role = "id"
            else:
                role = "other"
            for column in [binding] if isinstance(binding, str) else binding:
                roles.setdefault(column, set()).add(role)
    float_columns = [c for c, found in roles.items() if found == {"float"} and c not in label_columns]
    id_columns = [c for c, found in roles.items() if found == {"id"} and c not in label_columns]
    train_path, train = tables["train"]
    values = fill_values(train, float_columns, id_columns, str(train_path))
    filled, imputed = {}, {}
    for split, (path, table) in tables.items():
        table, imputed[split] = fill_missing(table, values, str(path))
        filled[split] = (path, table)
    return values, imputed, filled


def _training_set(sources: list[_Source], kinds: Mapping[str, str], spec: CompileSpec, table: pa.Table, file: str, workdir: Path) -> TrainingSet:
    """Run every stem over a table in onnxruntime; return its frontiers and the task labels."""
    budget = spec.cache_budget_mb * 1024 * 1024
    frontiers = []
    train_stems = "stems" in spec.train_components
    for source in sources:
        stem = source.components[0]
        limits = embedding_limits(stem)
        feeds = {}
        for signature in input_signatures(stem):
            original = source.normalized.input_names[signature.name]
            column = source.spec.inputs.get(original, original)
            feeds[signature.name] = bind_input(table, signature, column, file)
            if signature.name in limits:
                check_id_range(feeds[signature.name], limits[signature.name], column, original, f"{file} (source {source.spec.name!r})")
        if train_stems and not source.head_only:
            # A trained stem runs in torch on every step, so the cache contains its raw inputs.
            frontiers.append(tuple(torch.from_numpy(np.array(feeds[s.name])) for s in input_signatures(stem)))
            continue
        session = make_session(stem, spec.device if spec.device != "auto" else "auto")
        names = source.stem_outputs
        out = run_batched(session, feeds, names, memory_budget_bytes=budget, cache_dir=workdir)
        frontiers.append(tuple(torch.from_numpy(np.ascontiguousarray(out[name])) for name in names))
    labels = {}
    for task, kind in kinds.items():
        classes = _source_classes(sources, task) if kind == "multiclass" else None
        values = task_labels(table, spec.tasks[task].label_column, kind, file, classes, task=task)
        labels[task] = torch.tensor(values)
    return TrainingSet(frontiers, labels)


def _source_classes(sources: list[_Source], task: str) -> int:
    return _output_width(next(s for s in sources if s.spec.task == task))


def _dtype(name: str) -> torch.dtype:
    return {"float": torch.float32, "float32": torch.float32, "double": torch.float64, "float64": torch.float64, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}.get(name, torch.float32)


def _lower_source(source: _Source, spec: CompileSpec) -> SourceComponents:
    """Lower a source's blocks and head (and its stem when stems are trained); identity blocks stay identities."""
    name = source.spec.name
    if source.head_only:
        if spec.train_components:
            logger.info("source %s is head-only; --train %s leaves it frozen", name, ",".join(spec.train_components))
        output = next(value for value in source.components[0].graph.output if value.name == source.head_output)
        dims = tuple(d.dim_value for d in output.type.tensor_type.shape.dim[1:])
        frontier = [(dims, _dtype(onnx.helper.tensor_dtype_to_np_dtype(output.type.tensor_type.elem_type).name))]
        levels = len(source.decomposition.blocks)
        return SourceComponents(
            name, source.spec.task, [IdentityBlock() for _ in range(levels)], IdentityBlock(), [frontier] * (levels + 1),
            output=source.output_mode, classes=dims[-1] if dims else 1, head_only=True,
        )  # fmt: skip
    blocks = []
    for component, model in zip(source.decomposition.blocks, source.components[1:-1]):
        blocks.append(IdentityBlock() if component.identity else _lower_after_stem(source, model, component.name))
    for block in blocks:
        block.requires_grad_(False)
    train_heads = "heads" in spec.train_components
    head = _lower_after_stem(source, source.components[-1], "head", trainable=train_heads)
    head.requires_grad_(train_heads)
    stem = None
    if "stems" in spec.train_components:
        try:
            stem = lower(source.components[0], trainable=True, source=f"{name} stem")
        except ModelError as error:
            raise ModelError(f"--train stems: the stem of source {name!r} cannot be lowered to torch, so it cannot be trained. {error}") from None
    frontiers = [
        [(tuple(int(d) for d in t.shape[1:]), _dtype(t.dtype)) for t in frontier.tensors]
        for frontier in source.decomposition.frontiers
    ]
    classes = int(source.decomposition.head.outputs[0].shape[-1]) if len(source.decomposition.head.outputs[0].shape) > 1 else 1
    return SourceComponents(name, source.spec.task, blocks, head, frontiers, output=source.output_mode, classes=classes, stem=stem)


def _lower_after_stem(source: _Source, model: onnx.ModelProto, part: str, *, trainable: bool = False) -> torch.fx.GraphModule:
    """Lower a block or the head; a failure adds that the stem, which runs in onnxruntime, may contain the node."""
    try:
        return lower(model, trainable=trainable, source=f"{source.spec.name} {part}")
    except ModelError as error:
        raise ModelError(
            f"{error}. Source {source.spec.name!r} ({source.spec.path}): blocks and heads are lowered to torch, but the stem "
            "runs in onnxruntime and may contain any op it supports, so end the stem after this node: name the tensors "
            "that cut the graph there as frontier 0, boundaries = [[\"TENSOR\", ...]], in the source's [[source]] table"
        ) from error


def _trained_initializers(module: torch.nn.Module | None) -> dict[str, np.ndarray]:
    """Return ONNX initializer name -> trained value for a lowered module whose weights were trained."""
    if module is None or not any(p.requires_grad for p in module.parameters()):
        return {}
    info = lowering_info(module)
    values = dict(module.named_parameters())
    return {onnx_name: values[attr].detach().cpu().numpy() for onnx_name, attr in info.initializers.items() if attr in values}


def _source_predictions(sources: list[_Source], table: pa.Table, file: str, kinds: Mapping[str, str]) -> dict[str, list[np.ndarray]]:
    """Run each normalised source whole in onnxruntime; return each task's source outputs."""
    per_task: dict[str, list[np.ndarray]] = {}
    for source in sources:
        model = prune(source.normalized.model, [source.normalized.output])
        feeds = {}
        for signature in input_signatures(model):
            original = source.normalized.input_names[signature.name]
            feeds[signature.name] = bind_input(table, signature, source.spec.inputs.get(original, original), file)
        out = run_batched(make_session(model, "cpu"), feeds, [source.normalized.output])[source.normalized.output]
        if source.normalized.activation == "log_softmax":
            out = np.exp(out)  # the mixture, the metrics and the ensemble all read probabilities
        if kinds[source.spec.task] == "binary" and out.ndim == 2 and out.shape[1] == 2:
            out = out[:, 1:]  # [P(0), P(1)] columns of a classifier
        per_task.setdefault(source.spec.task, []).append(out)
    return per_task


def _check_initial_equality(model: FusedModel, sources: list[_Source], kinds: Mapping[str, str], valid: tuple[Path, pa.Table], valid_set: TrainingSet) -> None:
    """Raise when the untrained fused model differs from the sources' uniform mixture in onnxruntime."""
    fused = predict(model, valid_set)
    reference = _source_predictions(sources, valid[1], str(valid[0]), kinds)
    for task, outputs in reference.items():
        ensemble = np.mean([o.reshape(fused[task].shape) for o in outputs], axis=0)
        diff = float(np.max(np.abs(ensemble - fused[task])))
        logger.info("initial equality, task %s: max abs diff %.3g", task, diff)
        if diff > INITIAL_TOLERANCE:
            raise ModelError(
                f"before training, the fused model's task {task!r} differs from its sources in onnxruntime by {diff:.3g} "
                f"(tolerance {INITIAL_TOLERANCE}); a source's lowered components do not reproduce it"
            )


def _recompile(model: FusedModel, sources: list[_Source], fused_inputs: list[FusedInput], kinds: Mapping[str, str], valid_set: TrainingSet) -> onnx.ModelProto:
    layouts = []
    for m, source in enumerate(sources):
        decomposition = source.decomposition
        layouts.append(
            SourceLayout(
                name=source.spec.name,
                task=source.spec.task,
                model=source.normalized.model,
                components=_layout_components(source),
                frontiers=[list(f.names) for f in decomposition.frontiers],
                head_output=source.head_output,
                inputs={name: source.spec.inputs.get(original, original) for name, original in source.normalized.input_names.items()},
                trained={
                    0: _trained_initializers(model.stems[m] if not isinstance(model.stems[m], IdentityBlock) else None),
                    len(decomposition.components) - 1: _trained_initializers(model.heads[m]),
                },
            )
        )
    # Example frontiers for the export: a few rows of each level's output frontier.
    examples = []
    with torch.no_grad():
        frontiers, _ = valid_set.rows(slice(0, _EXPORT_ROWS))
        frontiers = [tuple(model.stems[m](*f)) for m, f in enumerate(frontiers)]
        for k, level in enumerate(model.levels):
            frontiers = [tuple(model.blocks[m][k](*f)) for m, f in enumerate(frontiers)]
            examples.append(frontiers)
            fed_back, _, _ = level([frontiers[m] for m in model.fused_sources])
            for m, frontier in zip(model.fused_sources, fed_back):
                frontiers[m] = frontier
        examples.append(frontiers)
    opset = max(int(o.version) for s in sources for o in s.normalized.model.opset_import if o.domain in ("", "ai.onnx"))
    ir_version = max(s.normalized.model.ir_version for s in sources)
    fused = recompile(model, layouts, fused_inputs, {task: task for task in kinds}, opset, ir_version, examples)
    onnx.checker.check_model(fused, full_check=True)
    onnx.shape_inference.infer_shapes(fused, check_type=True, strict_mode=True, data_prop=True)
    return fused


def _layout_components(source: _Source) -> list[list[str]]:
    """Node names per component; a head-only source is all stem, with empty blocks and head."""
    if source.head_only:
        return [[node.name for node in source.components[0].graph.node], *([] for _ in source.decomposition.components[1:])]
    return [list(c.nodes) for c in source.decomposition.components]


def _fused_feeds(fused: onnx.ModelProto, table: pa.Table, file: str) -> dict[str, np.ndarray]:
    return {sig.name: bind_input(table, sig, sig.name, file) for sig in input_signatures(fused)}


def _verify_parity(fused: onnx.ModelProto, valid: tuple[Path, pa.Table], expected: Mapping[str, np.ndarray], kinds: Mapping[str, str]) -> dict[str, float]:
    """Raise unless onnxruntime's outputs equal torch's within PARITY_TOLERANCE on the validation split; return the differences."""
    path, table = valid
    out = run_batched(make_session(fused, "cpu"), _fused_feeds(fused, table, str(path)), list(kinds))
    differences = {}
    for task in kinds:
        diff = float(np.max(np.abs(out[task] - expected[task].reshape(out[task].shape))))
        logger.info("parity, task %s: max abs diff %.3g", task, diff)
        if diff > PARITY_TOLERANCE:
            raise ModelError(
                f"the fused graph's task {task!r} differs from the trained torch model by {diff:.3g} on {path} "
                f"(tolerance {PARITY_TOLERANCE}); nothing was written"
            )
        differences[task] = diff
    return differences


def _report(model: FusedModel, fused: onnx.ModelProto, sources: list[_Source], kinds: Mapping[str, str], tables: Mapping[str, tuple[Path, pa.Table]], sets: Mapping[str, TrainingSet], training: TrainResult) -> dict[str, Any]:
    """Metrics per split of each source, their ensemble and the fused graph (onnxruntime), plus gate and attention means."""
    splits = {}
    for split in ("valid", "test"):
        if split not in tables:
            continue
        path, table = tables[split]
        fused_out = run_batched(make_session(fused, "cpu"), _fused_feeds(fused, table, str(path)), list(kinds))
        per_task = _source_predictions(sources, table, str(path), kinds)
        block: dict[str, Any] = {"tasks": {}}
        for task, kind in kinds.items():
            labels = sets[split].labels[task].numpy()
            names = [s.spec.name for s in sources if s.spec.task == task]
            entry: dict[str, Any] = {"kind": kind, "sources": {}}
            for name, values in zip(names, per_task[task]):
                entry["sources"][name] = task_metrics(kind, labels, values)
            if len(names) > 1:
                shape = fused_out[task].shape
                entry["ensemble"] = task_metrics(kind, labels, np.mean([v.reshape(shape) for v in per_task[task]], axis=0))
            entry["fused"] = task_metrics(kind, labels, fused_out[task])
            block["tasks"][task] = entry
        splits[split] = block
    shown = "test" if "test" in splits else "valid"
    return {
        "akfc_version": __version__,
        "split": shown,
        "tasks": splits[shown]["tasks"],
        "splits": splits,
        "fusion": _fusion_summary(model, sources, sets["valid"]),
        "training": {
            "best_epoch": training.best_epoch,
            "best_score": training.best_score,
            "epochs": [{"epoch": e.epoch, "loss": e.loss, "score": e.score, "seconds": e.seconds} for e in training.history],
        },
    }


@torch.no_grad()
def _fusion_summary(model: FusedModel, sources: list[_Source], valid_set: TrainingSet, batch_size: int = 8192) -> dict[str, Any]:
    """Mean gate weight per source and mean attention between tasks, per level, over the validation split."""
    levels = len(model.levels)
    gate_sums = [[None] * len(model.task_names) for _ in range(levels)]
    attention_sums = [None] * levels
    rows = 0
    for start in range(0, len(valid_set), batch_size):
        frontiers, _ = valid_set.rows(slice(start, start + batch_size))
        out = model(frontiers)
        n = frontiers[0][0].shape[0]
        rows += n
        for k in range(levels):
            for t, gates in enumerate(out.gates[k]):
                total = gates.sum(dim=0)
                gate_sums[k][t] = total if gate_sums[k][t] is None else gate_sums[k][t] + total
            total = out.attention[k].sum(dim=0)
            attention_sums[k] = total if attention_sums[k] is None else attention_sums[k] + total
    summary = []
    for k in range(levels):
        gates = {}
        for t, task in enumerate(model.task_names):
            names = [model.source_names[m] for m in model.fused_sources if m in model.task_sources[task]]
            gates[task] = {name: float(w) for name, w in zip(names, gate_sums[k][t] / rows)}
        attention = attention_sums[k] / rows
        summary.append({
            "gates": gates,
            "attention": {a: {b: float(attention[i, j]) for j, b in enumerate(model.task_names)} for i, a in enumerate(model.task_names)},
        })  # fmt: skip
    return {"levels": summary}


def _report_paths(output: Path) -> tuple[Path, Path, Path]:
    return output.parent / "report.json", output.parent / "report.md", output.parent / "report.png"


def checkpoint_folder(output: str | os.PathLike[str]) -> Path:
    """Return the folder of a compile's training checkpoints: `<output stem>.checkpoints` beside the output."""
    output = Path(output)
    return output.parent / f"{output.stem}.checkpoints"


def _write(output: Path, fused: onnx.ModelProto, report: dict[str, Any], external_data: bool | None) -> list[Path]:
    """Write the report files and the fused graph: every file is complete before the first one is renamed into place."""
    report_json, report_md, report_png = _report_paths(output)
    # NOTE: the renames run one after another, so a process killed between two of them leaves some report
    # files new and the graph old. The graph is renamed last, so it is never newer than its report.
    files = save_model_atomic(
        output, fused, external_data=external_data,
        beside=[
            (report_json, lambda tmp: Path(tmp).write_text(json_text(report))),
            (report_md, lambda tmp: Path(tmp).write_text(markdown_text(report, title=f"akfc report: {output.name}"))),
            (report_png, lambda tmp: draw_report(tmp, report)),
        ],
    )  # fmt: skip
    return [*files, report_json, report_md, report_png]
