"""`akfc run FUSED --data FILE --out FILE`: one prediction column per task."""

from __future__ import annotations

import argparse

import onnx

from akfc.data import read_table
from akfc.serving import predict, read_metadata, write_predictions

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="write the fused graph's predictions for a data table")
    parser.add_argument("fused", help="fused ONNX graph written by `akfc compile`")
    parser.add_argument("--data", required=True, help="CSV or Parquet table with the columns the graph reads")
    parser.add_argument("--out", required=True, help="output table: .parquet or .csv (one column per task)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="onnxruntime device")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    model = onnx.load(args.fused)
    metadata = read_metadata(model, args.fused)
    table = read_table(args.data)
    outputs = [info["output"] for info in metadata.tasks.values()]
    predictions = predict(model, table, args.data, outputs, device=args.device)
    write_predictions(args.out, predictions, metadata.tasks)
    print(f"wrote {table.num_rows} rows of {', '.join(metadata.tasks)} predictions to {args.out}")
    return 0
