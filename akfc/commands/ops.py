"""`akfc ops`: the ONNX ops that blocks and heads may contain (the torch lowering's op table)."""

from __future__ import annotations

import argparse
import json

import onnx

from akfc.lower import supported_ops, supported_opsets

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ops",
        help="list the ONNX ops that can be lowered to torch, with their versions and opsets",
        description=(
            "List the default-domain ONNX ops that akfc lowers to torch (what blocks and heads may "
            "contain; stems run in onnxruntime and may use any op it supports). 'versions' are the "
            "op's schema versions; 'opsets' the model opsets under which the op resolves to one of them."
        ),
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the table as JSON")
    output.add_argument("--markdown", action="store_true", help="print the table as a Markdown table")
    parser.set_defaults(func=_ops)


def _ops(args: argparse.Namespace) -> int:
    rows = [
        {
            "op_type": spec.op_type,
            "versions": list(spec.versions),
            "opsets": [f"{start}-{end}" if end > start else str(start) for start, end in supported_opsets(spec)],
            "limits": spec.limits,
        }
        for spec in supported_ops()
    ]
    if args.json:
        print(json.dumps({"onnx": onnx.__version__, "ops": rows}, indent=2))
        return 0
    if args.markdown:
        print("| op | versions | opsets | limits |")
        print("|---|---|---|---|")
        for row in rows:
            print(f"| {row['op_type']} | {_join(row['versions'])} | {_join(row['opsets'])} | {row['limits']} |")
        return 0

    op_width = max(len(row["op_type"]) for row in rows)
    version_width = max(len(_join(row["versions"])) for row in rows)
    opset_width = max(len(_join(row["opsets"])) for row in rows)
    print(f"{'op':<{op_width}}  {'versions':<{version_width}}  {'opsets':<{opset_width}}  limits")
    for row in rows:
        print(
            f"{row['op_type']:<{op_width}}  {_join(row['versions']):<{version_width}}  "
            f"{_join(row['opsets']):<{opset_width}}  {row['limits']}".rstrip()
        )
    print(f"{len(rows)} ops (default ONNX domain; onnx {onnx.__version__} knows opsets up to "
          f"{onnx.defs.onnx_opset_version()})")
    return 0


def _join(values: list) -> str:
    return ", ".join(str(value) for value in values)
