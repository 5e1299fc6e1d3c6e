"""`akfc inspect MODEL`: how a source model decomposes into stem, blocks and head."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnx

from rich.console import Console

from akfc.errors import SpecError
from akfc.inspect_fused import fused_summary, fused_table, fused_to_dict, is_fused
from akfc.serving import read_metadata
from akfc.inspect import component_table, draw, inspect_model, summary_line, to_dict
from akfc.passes.decompose import DEFAULT_LEVELS
from akfc.passes.normalize import KINDS

__all__ = ["parse_frontier", "register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show how a model decomposes into stem, blocks and head",
        description=(
            "Load an ONNX model, normalise it and cut it into a stem, L blocks and a head. Prints one row per "
            "component (ops, parameters, FLOPs per row, input and output tensors) and a summary line."
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="ONNX file of a source model")
    parser.add_argument("--levels", type=int, default=DEFAULT_LEVELS, metavar="L", help=f"number of blocks between stem and head (default {DEFAULT_LEVELS})")
    parser.add_argument("--output", metavar="NAME", help="name of the graph output with the task prediction, when the model has several outputs")
    parser.add_argument("--kind", choices=KINDS, help="task kind, overriding the one inferred from the terminal activation")
    parser.add_argument(
        "--frontier",
        action="append",
        default=[],
        metavar="K=TENSOR[,TENSOR...]",
        help="tensors that form frontier K (0 the stem frontier, L the head frontier); repeat for several frontiers",
    )
    parser.add_argument("--json", action="store_true", help="print the decomposition as JSON instead of a table")
    picture = parser.add_mutually_exclusive_group()
    picture.add_argument("--svg", metavar="FILE", help="also draw the components into an SVG file")
    picture.add_argument("--png", metavar="FILE", help="also draw the components into a PNG file")
    parser.set_defaults(func=_inspect)


def parse_frontier(text: str) -> tuple[int, list[str]]:
    """Parse one --frontier value, "K=T1,T2", into (K, [T1, T2])."""
    index, separator, names = text.partition("=")
    tensors = [name.strip() for name in names.split(",") if name.strip()]
    if not separator or not index.strip().isdigit() or not tensors:
        raise SpecError(f"--frontier {text!r}: expected K=TENSOR[,TENSOR...] with K a frontier number, e.g. 1=relu_1,add_3")
    return int(index), tensors


def _inspect_fused(args: argparse.Namespace, model: onnx.ModelProto) -> int:
    if args.json:
        print(json.dumps(fused_to_dict(model, args.model), indent=2))
        return 0
    if args.svg or args.png:
        raise SpecError(f"{args.model} is a fused graph; --svg and --png draw source models only")
    console = Console()
    console.print(fused_table(model, f"{args.model}: components"))
    for line in fused_summary(read_metadata(model, args.model), model):
        console.print(line, highlight=False, soft_wrap=True)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    # A fused graph's components are read from its node namespaces, not cut again.
    header = onnx.load(args.model, load_external_data=False) if _is_onnx_file(args.model) else None
    if header is not None and is_fused(header):
        return _inspect_fused(args, onnx.load(args.model))
    if args.levels < 1:
        raise SpecError(f"--levels {args.levels}: the number of levels must be at least 1")
    frontiers = dict(parse_frontier(text) for text in args.frontier)
    inspection = inspect_model(args.model, levels=args.levels, output=args.output, kind=args.kind, frontiers=frontiers or None)
    if args.json:
        print(json.dumps(to_dict(inspection), indent=2))
    else:
        console = Console()
        console.print(component_table(inspection))
        console.print(summary_line(inspection), highlight=False, soft_wrap=True)
    picture = args.svg or args.png
    if picture:
        written = draw(inspection, picture)
        if not args.json:
            print(f"picture written to {written}")
    return 0


def _is_onnx_file(path: str) -> bool:
    """Return whether `path` parses as an ONNX model; anything else is left to the source loader's errors."""
    if not Path(path).is_file():
        return False
    try:
        onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 -- any parse failure means "not a fused graph"; load_model reports it properly
        return False
    return True
