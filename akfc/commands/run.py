"""`akfc run FUSED --data FILE --out FILE`: one prediction column per task."""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from akfc.atomic import external_data_files, remove_stale_temporaries
from akfc.data import read_table
from akfc.errors import ModelError, SpecError
from akfc.serving import predict, read_metadata, write_predictions

__all__ = ["load_fused", "register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="write the fused graph's predictions for a data table",
        description="Run a fused graph over a CSV or Parquet table and write one prediction column per task "
        "(one per class for a multiclass task).",
    )
    parser.add_argument("fused", help="fused ONNX graph written by `akfc compile`")
    parser.add_argument("--data", required=True, help="CSV or Parquet table with the columns the graph reads")
    parser.add_argument("--out", required=True, help="output table: .parquet or .csv (one column per task)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="onnxruntime device")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    parser.set_defaults(func=_run)


def load_fused(path: str) -> onnx.ModelProto:
    """Load a fused graph without its external data, which onnxruntime reads from disk.

    A missing or unreadable file, or a missing external data file, is an akfc error naming it.
    """
    if not Path(path).is_file():
        raise ModelError(f"{path}: no such file; give the fused graph written by `akfc compile`")
    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, ValueError) as error:
        raise ModelError(f"{path} is not an ONNX model ({error}); give the fused graph written by `akfc compile`") from None
    missing = [data for data in external_data_files(path, model) if not data.is_file()]
    if missing:
        raise ModelError(
            f"{path} keeps its weights in {', '.join(str(data) for data in missing)}, which is missing; "
            f"copy it into the folder of {path} together with the graph"
        )
    return model


def _run(args: argparse.Namespace) -> int:
    if Path(args.out).exists() and not args.force:
        raise SpecError(f"output {args.out} exists; pass --force to overwrite it, or choose another --out")
    remove_stale_temporaries(args.out)
    model = load_fused(args.fused)
    metadata = read_metadata(model, args.fused)
    table = read_table(args.data)
    outputs = [info["output"] for info in metadata.tasks.values()]
    predictions = predict(model, table, args.data, outputs, device=args.device, session_path=args.fused)
    write_predictions(args.out, predictions, metadata.tasks)
    print(f"wrote {table.num_rows} rows of {', '.join(metadata.tasks)} predictions to {args.out}")
    return 0
