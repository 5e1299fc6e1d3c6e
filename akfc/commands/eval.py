"""`akfc eval FUSED --data FILE [--sources ...]`: per-task metrics of the fused graph and its sources."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from akfc.commands.run import load_fused
from akfc.data import read_table
from akfc.report import metrics_table, plot_report, write_json
from akfc.serving import evaluate_table

__all__ = ["print_metrics", "register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="compare the fused graph with its sources on a labelled table",
        description="Compute each task's metrics for the fused graph and, for each source file given, for that "
        "source and for the sources' ensemble, all in onnxruntime.",
    )
    parser.add_argument("fused", help="fused ONNX graph written by `akfc compile`")
    parser.add_argument("--data", required=True, help="CSV or Parquet table with feature and label columns")
    parser.add_argument("--sources", nargs="*", default=[], metavar="MODEL", help="source ONNX files to evaluate beside the fused graph")
    parser.add_argument("--json", metavar="FILE", help="also write the metrics as JSON to FILE ('-' prints JSON instead of the table)")
    parser.add_argument("--png", metavar="FILE", help="also draw the metrics as a bar chart into FILE")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="onnxruntime device")
    parser.set_defaults(func=_eval)


def print_metrics(report: dict, title: str, console: Console | None = None) -> None:
    """Print the report's metrics with rich: one table per task, since metric columns depend on the task kind."""
    console = console or Console()
    table: Table | None = None
    for row in metrics_table(report):
        if row[0] == "task":
            if table is not None:
                console.print(table)
            table = Table(title=title)
            for name in row[1:]:
                table.add_column(name, justify="left" if name == "model" else "right")
            continue
        table.add_row(*row[1:], style="bold" if row[1] == "fused" else None)
        table.title = f"{title}: {row[0]}"
    if table is not None:
        console.print(table)


def _eval(args: argparse.Namespace) -> int:
    load_fused(args.fused)  # a clean error for a missing or unreadable file, before any work
    table = read_table(args.data)
    report = evaluate_table(args.fused, table, args.data, source_paths=args.sources, device=args.device)
    if args.json == "-":
        print(json.dumps(report, indent=2))
    else:
        print_metrics(report, f"{Path(args.fused).name} on {Path(args.data).name}")
        if args.json:
            write_json(args.json, report)
    if args.png:
        plot_report(args.png, report)
    return 0
