"""The compile spec: sources, tasks, data files and options, from TOML and/or command-line flags.

A spec file and the flags set the same options; flags override the file.
Paths in a spec file are relative to the file's folder.

Example::

    [data]
    train = "data/train.parquet"
    valid = "data/valid.parquet"
    test  = "data/test.parquet"          # optional
    fill = false                         # impute missing feature values (train mean; id 0 for embedding ids)

    [fusion]
    levels = 3
    width = 64
    heads = 4

    [training]
    epochs = 20
    patience = 3
    batch_size = 512
    lr = 1e-4
    seed = 0
    device = "auto"                      # auto, cpu or cuda

    [task.income]
    kind = "binary"                      # optional: inferred from the head
    label = "income"                     # optional: defaults to the task name

    [[source]]
    task = "income"
    path = "models/income_dcn.onnx"

    [[source]]
    task = "income"
    path = "models/income_sklearn.onnx"
    output = "output_probability"        # which graph output is the task's
    inputs = { native_country = "native-country" }

    [output]
    path = "fused.onnx"
    guard_ids = false                    # map ids outside an embedding table to 0 inside the graph
    external_data = false                # weights in a data file beside the graph (default: only above 2 GiB)
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from akfc.errors import SpecError

__all__ = ["CompileSpec", "SourceSpec", "TaskSpec", "load_spec", "merge_flags", "parse_source_argument"]

_KINDS = ("binary", "multiclass", "regression")
_DEVICES = ("auto", "cpu", "cuda")
_TRAINABLE = ("heads", "stems")


@dataclass
class SourceSpec:
    """One source model and how it binds to the data."""

    task: str
    path: Path
    name: str = ""  # source id: prefixes every name of this source in the fused graph; from the file name by default
    output: str | None = None  # graph output that is the task's; needed only when it cannot be inferred
    inputs: dict[str, str | list[str]] = field(default_factory=dict)  # graph input -> data column (or ordered columns)
    boundaries: list[list[str]] | None = None  # user-named frontiers (tensor names), one list per boundary


@dataclass
class TaskSpec:
    """One task: its kind and label column."""

    name: str
    kind: str | None = None  # inferred from the sources' heads when None
    label: str | None = None  # data column; the task name when None

    @property
    def label_column(self) -> str:
        return self.label or self.name


@dataclass
class CompileSpec:
    """Everything `akfc compile` needs."""

    sources: list[SourceSpec]
    tasks: dict[str, TaskSpec]
    train: Path | None = None
    valid: Path | None = None
    test: Path | None = None
    output: Path = Path("fused.onnx")
    levels: int = 3  # L: trunk levels fused per source
    width: int = 64  # D: width of the task tokens
    heads: int = 4  # attention heads of the inter-task layer
    dropout: float = 0.0  # dropout in the inter-task layer
    weight_decay: float = 1e-4  # AdamW weight decay of the trained parameters
    epochs: int = 20
    patience: int = 3
    batch_size: int = 512
    lr: float = 1e-4  # measured on the Adult demo: 1e-3 overfits within the first epoch
    seed: int = 0
    device: str = "auto"
    train_components: list[str] = field(default_factory=list)  # "heads" and/or "stems" to unfreeze
    cache_budget_mb: int = 2048  # stem outputs larger than this are memory-mapped from disk
    force: bool = False  # overwrite an existing output
    fill: bool = False  # impute missing feature values: the train mean for float columns, the unknown id 0 for embedding ids
    guard_ids: bool = False  # add a guard to the fused graph that maps ids outside an embedding table to 0
    external_data: bool | None = None  # weights in a data file beside the graph; None: only above protobuf's 2 GiB limit

    def validate(self) -> CompileSpec:
        """Check values that do not depend on the models or data; return self.

        The messages name options by their spec keys; the command line spells
        them with dashes (batch_size is --batch-size).
        """
        if not self.sources:
            raise SpecError("no sources given; pass TASK=PATH arguments or [[source]] tables in the spec")
        # Tasks keep the order in which the sources first name them: it is the order of the fused graph's outputs.
        order = list(dict.fromkeys(source.task for source in self.sources))
        for task in order:
            self.tasks.setdefault(task, TaskSpec(task))
        self.tasks = {task: self.tasks[task] for task in sorted(self.tasks, key=lambda t: order.index(t) if t in order else len(order))}
        for task in self.tasks.values():
            if task.kind is not None and task.kind not in _KINDS:
                raise SpecError(f"task {task.name!r}: kind {task.kind!r} is invalid; use one of {', '.join(_KINDS)}")
            if not any(source.task == task.name for source in self.sources):
                raise SpecError(f"task {task.name!r} has no source; add a [[source]] with task = {task.name!r} or remove [task.{task.name}]")
        for name, value, low in (("levels", self.levels, 1), ("width", self.width, 1), ("heads", self.heads, 1),
                                 ("epochs", self.epochs, 0), ("patience", self.patience, 0), ("batch_size", self.batch_size, 1)):
            if not isinstance(value, int) or value < low:
                raise SpecError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.width % self.heads:
            raise SpecError(f"width {self.width} must be a multiple of heads {self.heads}")
        if not self.lr > 0:
            raise SpecError(f"lr must be positive, got {self.lr!r}")
        if not 0 <= self.dropout < 1:
            raise SpecError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not self.weight_decay >= 0:
            raise SpecError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.device not in _DEVICES:
            raise SpecError(f"device {self.device!r} is invalid; use one of {', '.join(_DEVICES)}")
        for component in self.train_components:
            if component not in _TRAINABLE:
                raise SpecError(f"cannot train {component!r}; --train accepts {', '.join(_TRAINABLE)}")
        for name, value in (("fill", self.fill), ("guard_ids", self.guard_ids)):
            if not isinstance(value, bool):
                raise SpecError(f"{name} must be true or false, got {value!r}")
        if self.external_data is not None and not isinstance(self.external_data, bool):
            raise SpecError(f"external_data must be true or false, got {self.external_data!r}")
        _assign_source_names(self.sources)
        return self


def _assign_source_names(sources: list[SourceSpec]) -> None:
    """Give every source a unique id made of letters, digits and underscores."""
    taken: set[str] = {source.name for source in sources if source.name}
    for source in sources:
        if source.name:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", source.name):
                raise SpecError(f"source name {source.name!r} is invalid; use letters, digits and underscores")
            continue
        base = re.sub(r"\W", "_", source.path.stem) or "source"
        if base[0].isdigit():
            base = f"s_{base}"
        name, n = base, 2
        while name in taken:
            name, n = f"{base}_{n}", n + 1
        taken.add(name)
        source.name = name
    names = [source.name for source in sources]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SpecError(f"source names must be unique; {', '.join(duplicates)} appear more than once")


def parse_source_argument(argument: str) -> SourceSpec:
    """Parse a `TASK=PATH` or `TASK=PATH#OUTPUT` command-line argument.

    OUTPUT names the graph output that is the task's, like `output` in a spec.
    The text after the last `#` is taken as OUTPUT unless the whole of PATH
    names an existing file, so a file whose name contains `#` still works.
    """
    task, sep, path = argument.partition("=")
    if not sep or not task or not path:
        raise SpecError(f"source {argument!r} is not of the form TASK=PATH, e.g. income=models/income_dcn.onnx")
    if "#" not in path or Path(path).is_file():
        return SourceSpec(task=task, path=Path(path))
    path, _, output = path.rpartition("#")
    if not path or not output:
        raise SpecError(
            f"source {argument!r} is not of the form TASK=PATH#OUTPUT; give both the file and the graph output, "
            "e.g. income=models/income_sklearn.onnx#probabilities"
        )
    return SourceSpec(task=task, path=Path(path), output=output)


def _expect(table: dict[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    value = table[key]
    allowed = types if isinstance(types, tuple) else (types,)
    # bool is an int subclass, but `levels = true` is a mistake, not a 1.
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        expected = " or ".join(t.__name__ for t in allowed)
        raise SpecError(f"{where}: {key} must be {expected}, got {value!r}")
    return value


def _source_from_table(table: dict[str, Any], index: int, base: Path, file: Path) -> SourceSpec:
    where = f"{file}: [[source]] #{index + 1}"
    known = {f.name for f in fields(SourceSpec)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise SpecError(f"{where}: unknown key {', '.join(unknown)}; known keys are {', '.join(sorted(known))}")
    for key in ("task", "path"):
        if key not in table:
            raise SpecError(f"{where}: missing key {key!r}")
    inputs = table.get("inputs", {})
    if not isinstance(inputs, dict) or not all(
        isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(c, str) for c in v)) for v in inputs.values()
    ):
        raise SpecError(f"{where}: inputs must map graph input names to a column name or a non-empty list of column names")
    boundaries = table.get("boundaries")
    if boundaries is not None and not (
        isinstance(boundaries, list) and all(isinstance(b, list) and all(isinstance(t, str) for t in b) for b in boundaries)
    ):
        raise SpecError(f"{where}: boundaries must be a list of lists of tensor names")
    return SourceSpec(
        task=_expect(table, "task", str, where),
        path=base / _expect(table, "path", str, where),
        name=table.get("name", ""),
        output=table.get("output"),
        inputs=dict(inputs),
        boundaries=boundaries,
    )


def load_spec(path: str | Path) -> CompileSpec:
    """Read a TOML spec; relative paths resolve against the spec's folder. Nothing in it is evaluated."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"spec file {path} not found; give a TOML spec, or sources as TASK=PATH (e.g. income=models/income.onnx)") from None
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"spec file {path} is not valid TOML: {error}") from None
    base = path.parent
    known_sections = {"data", "fusion", "training", "task", "source", "output"}
    unknown = sorted(set(document) - known_sections)
    if unknown:
        raise SpecError(f"{path}: unknown section {', '.join(unknown)}; known sections are {', '.join(sorted(known_sections))}")

    sources = [_source_from_table(table, i, base, path) for i, table in enumerate(document.get("source", []))]
    tasks = {}
    for name, table in document.get("task", {}).items():
        extra = sorted(set(table) - {"kind", "label"})
        if extra:
            raise SpecError(f"{path}: [task.{name}] has unknown key {', '.join(extra)}; known keys are kind, label")
        tasks[name] = TaskSpec(name, table.get("kind"), table.get("label"))

    spec = CompileSpec(sources=sources, tasks=tasks)
    data = document.get("data", {})
    unknown = sorted(set(data) - {"train", "valid", "test", "fill"})
    if unknown:
        raise SpecError(f"{path}: [data] has unknown key {', '.join(unknown)}; known keys are train, valid, test, fill")
    for key in ("train", "valid", "test"):
        if key in data:
            setattr(spec, key, base / _expect(data, key, str, f"{path}: [data]"))
    if "fill" in data:
        spec.fill = _expect(data, "fill", bool, f"{path}: [data]")
    options = {**document.get("fusion", {}), **document.get("training", {})}
    settable = {f.name for f in fields(CompileSpec)} - {"sources", "tasks", "train", "valid", "test", "output", "fill", "guard_ids", "external_data"}
    homes = {"fill": "[data]", "guard_ids": "[output]", "external_data": "[output]"}
    for key, value in options.items():
        if key in homes:
            raise SpecError(f"{path}: option {key!r} belongs in {homes[key]}, not in [fusion] or [training]")
        if key not in settable:
            raise SpecError(f"{path}: unknown option {key!r}; known options are {', '.join(sorted(settable))}")
        setattr(spec, key, value)
    if "output" in document:
        output = document["output"]
        if not isinstance(output, dict) or not set(output) & {"path", "guard_ids", "external_data"}:
            raise SpecError(f"{path}: [output] needs path = \"fused.onnx\"")
        unknown = sorted(set(output) - {"path", "guard_ids", "external_data"})
        if unknown:
            raise SpecError(f"{path}: [output] has unknown key {', '.join(unknown)}; known keys are path, guard_ids, external_data")
        if "path" in output:
            spec.output = base / _expect(output, "path", str, f"{path}: [output]")
        if "guard_ids" in output:
            spec.guard_ids = _expect(output, "guard_ids", bool, f"{path}: [output]")
        if "external_data" in output:
            spec.external_data = _expect(output, "external_data", bool, f"{path}: [output]")
    return spec


def merge_flags(spec: CompileSpec, **flags: Any) -> CompileSpec:
    """Return the spec with every flag that is not None applied over it."""
    return replace(spec, **{key: value for key, value in flags.items() if value is not None})
