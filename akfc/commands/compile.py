"""`akfc compile SPEC | TASK=PATH ...`: fuse source models into one multi-task ONNX graph."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from akfc.commands.eval import print_metrics
from akfc.pipeline import checkpoint_folder
from akfc.pipeline import compile as compile_spec
from akfc.errors import AkfcError, SpecError
from akfc.spec import CompileSpec, load_spec, merge_flags, parse_source_argument
from akfc.train import LAST_CHECKPOINT, load_checkpoint

__all__ = ["register", "spec_from_args"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compile",
        help="fuse source models into one multi-task ONNX graph",
        description="Fuse trained single-task ONNX models into one multi-task ONNX graph. Give a TOML spec, "
        "TASK=PATH sources, or both (flags override the spec).",
    )
    parser.add_argument(
        "sources", nargs="+", metavar="SPEC | TASK=PATH[#OUTPUT]",
        help="a TOML spec file and/or sources as TASK=PATH; TASK=PATH#OUTPUT also names the graph output that is the "
        "task's, for a model with several outputs (the text after the last '#', unless PATH itself is an existing file)",
    )  # fmt: skip
    parser.add_argument("-o", "--output", help="fused ONNX file to write (default fused.onnx); report.json/.md/.png go beside it")
    parser.add_argument("--train", help="training table (CSV or Parquet)")
    parser.add_argument("--valid", help="validation table, for early stopping and the parity check")
    parser.add_argument("--test", help="test table, for the report (optional)")
    parser.add_argument("--levels", type=int, help="trunk levels fused per source (default 3)")
    parser.add_argument("--width", type=int, help="width of the task tokens (default 64)")
    parser.add_argument("--heads", type=int, help="attention heads of the inter-task layer (default 4)")
    parser.add_argument("--dropout", type=float, help="dropout in the inter-task layer (default 0)")
    parser.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.0001)")
    parser.add_argument("--epochs", type=int, help="maximum training epochs (default 20)")
    parser.add_argument("--patience", type=int, help="epochs without improvement before stopping (default 3)")
    parser.add_argument("--batch-size", type=int, help="training rows per step (default 512)")
    parser.add_argument("--lr", type=float, help="AdamW learning rate (default 0.0001)")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="training and onnxruntime device (default auto)")
    parser.add_argument("--kind", action="append", default=[], metavar="TASK=KIND", help="override a task's kind (binary, multiclass, regression)")
    parser.add_argument("--label", action="append", default=[], metavar="TASK=COLUMN", help="label column of a task (default: the task name)")
    parser.add_argument("--train-components", dest="train_components", action="append", choices=("heads", "stems"), help="also train these source components (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted compile from its last checkpoint")
    parser.add_argument("--force", action="store_true", default=None, help="overwrite an existing output")
    parser.add_argument(
        "--fill", action="store_true", default=None,
        help="impute empty, NaN and infinite feature values instead of rejecting them: a float column gets its mean over "
        "the train split, an embedding-id column the unknown id 0 (which must be the id the sources were trained with "
        "for unknown values). The values are stored in the fused graph, and akfc run and eval impute them too. "
        "Labels, text columns and other integer columns are never imputed",
    )  # fmt: skip
    parser.add_argument(
        "--guard-ids", dest="guard_ids", action="store_true", default=None,
        help="add nodes to the fused graph that map ids outside an embedding table to 0, for serving with onnxruntime "
        "directly; akfc compile, run and eval still reject such ids",
    )  # fmt: skip
    parser.add_argument(
        "--external-data", dest="external_data", action="store_true", default=None,
        help="store the fused graph's weights in a data file beside it (OUTPUT.<16 hex digits>.data); "
        "without it, only a graph above protobuf's 2 GiB limit is stored that way",
    )  # fmt: skip
    parser.set_defaults(func=_compile, interrupted=_resume_hint)


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key or not item:
            raise SpecError(f"{flag} {value!r} is not of the form TASK=VALUE")
        pairs[key] = item
    return pairs


def spec_from_args(args: argparse.Namespace) -> CompileSpec:
    """Build the compile spec from a spec file (if one is given) and the command-line flags."""
    files = [item for item in args.sources if "=" not in item]
    if len(files) > 1:
        raise SpecError(f"give at most one spec file, got {', '.join(files)}")
    spec = load_spec(files[0]) if files else CompileSpec(sources=[], tasks={})
    spec.sources.extend(parse_source_argument(item) for item in args.sources if "=" in item)
    flags = {
        "output": Path(args.output) if args.output else None,
        "train": Path(args.train) if args.train else None,
        "valid": Path(args.valid) if args.valid else None,
        "test": Path(args.test) if args.test else None,
        "levels": args.levels,
        "width": args.width,
        "heads": args.heads,
        "dropout": args.dropout,
        "weight_decay": args.weight_decay,
        "epochs": args.epochs,
        "patience": args.patience,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "device": args.device,
        "train_components": args.train_components,
        "force": args.force,
        "fill": args.fill,
        "guard_ids": args.guard_ids,
        "external_data": args.external_data,
    }
    spec = merge_flags(spec, **flags)
    spec.validate()
    for task, kind in _pairs(args.kind, "--kind").items():
        if task not in spec.tasks:
            raise SpecError(f"--kind names task {task!r}, which has no source; tasks are {', '.join(spec.tasks)}")
        spec.tasks[task].kind = kind
    for task, label in _pairs(args.label, "--label").items():
        if task not in spec.tasks:
            raise SpecError(f"--label names task {task!r}, which has no source; tasks are {', '.join(spec.tasks)}")
        spec.tasks[task].label = label
    return spec.validate()


def _compile(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    console = Console(stderr=True, quiet=args.quiet)
    console.print(
        f"preparing {len(spec.sources)} sources for {len(spec.tasks)} tasks: loading, decomposing, lowering and caching stem outputs",
        highlight=False,
    )
    columns = (TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=args.quiet) as bars:
        state = {"task": None, "epoch": _first_epoch(spec) if args.resume else 1}

        def progress(done: int, total: int) -> None:
            if state["task"] is None:
                state["task"] = bars.add_task("train", total=total, epoch=state["epoch"])
            bars.update(state["task"], completed=done)

        def on_epoch(summary, line: str) -> None:  # noqa: ANN001 -- akfc.train.EpochSummary
            console.print(line, soft_wrap=True, highlight=False)
            if state["task"] is not None:
                bars.remove_task(state["task"])
            state["task"], state["epoch"] = None, summary.epoch + 1

        result = compile_spec(spec, on_epoch=on_epoch, progress=progress, resume=args.resume)
    if not args.quiet:
        print_metrics(result.report, f"{result.output.name} ({result.report['split']} split)")
        print(f"wrote {', '.join(str(path) for path in result.files)}")
    return 0


def _first_epoch(spec: CompileSpec) -> int:
    """Return the epoch a resumed compile starts with: the one after its checkpoint's, or 1 without one."""
    checkpoint = checkpoint_folder(spec.output) / LAST_CHECKPOINT
    if not checkpoint.is_file():
        return 1
    return int(load_checkpoint(checkpoint)["epoch"]) + 1


def _resume_hint(args: argparse.Namespace, command: list[str]) -> str:
    """Return where an interrupted compile left its last checkpoint and the command that continues from it."""
    try:
        spec = spec_from_args(args)
    except AkfcError:
        return "no checkpoint was written"
    checkpoint = checkpoint_folder(spec.output) / LAST_CHECKPOINT
    if not checkpoint.is_file():
        return f"no epoch had finished, so there is no checkpoint to resume from; run the same command again to start over: {shlex.join(command)}"
    resume = command if "--resume" in command else [*command, "--resume"]
    return f"the last finished epoch is saved in {checkpoint}; continue from it with: {shlex.join(resume)}"
