"""Build the demo source sets: zoo models trained on the prepared Adult data, exported to ONNX.

Run (after ``models.adult.prepare`` wrote DATA/adult and DATA/adult4):
    python -m models.adult.build_sources --data out --out out/sources
    python -m models.adult.build_sources --data out --out /tmp/sources --quick   # seconds, for tests

Writes OUT/adult/*.onnx and OUT/adult4/*.onnx, and a sources.json per set.
For each source it lists file, task, kind, architecture, exporter, opset,
output name, parameter count, epochs, the validation metric and the test metric. The test
metric is measured by onnxruntime on the written file: AUC for binary, macro
one-vs-rest AUC for multiclass, RMSE of the standardised value for regression.

Source sets:
    adult   income and marital, two sources each, four architectures.
    adult4  income, marital, hours (regression) and relationship (multiclass),
            six sources over all five architectures.
Across the sets both exporters appear for every task kind.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table

from models.adult.prepare import load_schema, load_split
from models.zoo.architectures import FeatureSpec, TaskSpec
from akfc.atomic import write_text_atomic
from akfc.serving import file_sha256
from models.zoo.export import OUTPUT_NAMES, export_model
from models.zoo.training import EpochLog, TrainConfig, metric_name, score, train_model

__all__ = ["SOURCE_SETS", "QUICK_TRAINING", "SourcePlan", "build_set", "main"]


@dataclass(frozen=True)
class SourcePlan:
    """One source to build: which task, architecture and exporter."""

    task: str
    architecture: str
    exporter: str  # "legacy" or "dynamo"

    @property
    def file(self) -> str:
        return f"{self.task}_{self.architecture}.onnx"


SOURCE_SETS: dict[str, tuple[SourcePlan, ...]] = {
    "adult": (
        SourcePlan("income", "dcn", "dynamo"),
        SourcePlan("income", "mlp_deep", "legacy"),
        SourcePlan("marital", "deepfm", "legacy"),
        SourcePlan("marital", "autoint", "dynamo"),
    ),
    "adult4": (
        SourcePlan("income", "mlp_wide", "legacy"),
        SourcePlan("marital", "dcn", "dynamo"),
        SourcePlan("hours", "mlp_deep", "dynamo"),
        SourcePlan("hours", "deepfm", "legacy"),
        SourcePlan("relationship", "autoint", "legacy"),
        SourcePlan("relationship", "mlp_wide", "dynamo"),
    ),
}

# One epoch of 30 steps: enough to write checked files and sources.json, not a usable model.
QUICK_TRAINING = TrainConfig(max_epochs=1, max_steps=30)


def _onnxruntime_outputs(path: Path, features: FeatureSpec, table: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (outputs,) = session.run(None, {name: table[name] for name in features.names})
    return outputs


def _build_source(
    plan: SourcePlan,
    schema: dict[str, Any],
    splits: dict[str, dict[str, np.ndarray]],
    out_dir: Path,
    config: TrainConfig,
    console: Console,
) -> dict[str, Any]:
    features, task = FeatureSpec.from_schema(schema), TaskSpec.from_schema(schema, plan.task)
    metric = metric_name(task.kind)
    label = f"{schema['config']}/{plan.file}"

    # 1. train, with the running epoch in a transient status line
    with console.status(f"training {label}") as status:

        def show(log: EpochLog) -> None:
            status.update(f"training {label}: epoch {log.epoch}, loss {log.train_loss:.4f}, valid {metric} {log.valid_metric:.4f}")

        result = train_model(plan.architecture, features, task, splits["train"], splits["valid"], config, on_epoch=show)

    # 2. export with the parity check over the whole test split
    exported = export_model(result.model, out_dir / plan.file, plan.exporter, splits["test"])

    # 3. the test metric, measured by onnxruntime on the written file
    test_metric = score(task.kind, splits["test"][plan.task], _onnxruntime_outputs(exported.path, features, splits["test"]))
    parameters = sum(parameter.numel() for parameter in result.model.parameters())
    console.print(
        f"{label}: {plan.exporter} opset {exported.opset}, {result.epochs} epochs "
        f"(best {result.best_epoch}), valid {metric} {result.best_valid_metric:.4f}, test {metric} {test_metric:.4f}, "
        f"{result.seconds:.1f} s"
    )
    return {
        "file": plan.file,
        "task": plan.task,
        "kind": task.kind,
        "architecture": plan.architecture,
        "exporter": plan.exporter,
        "opset": exported.opset,
        "output": OUTPUT_NAMES[task.kind],
        "parameters": parameters,
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "valid": {metric: result.best_valid_metric},
        "test": {metric: test_metric},
        "parity_max_abs_diff": exported.max_abs_diff,
        "sha256": file_sha256(exported.path),
    }


def build_set(name: str, data_dir: Path, out_dir: Path, config: TrainConfig, console: Console) -> dict[str, Any]:
    """Train, export and check every source of one set, then write its sources.json and return the content."""
    schema = load_schema(data_dir)
    if schema["config"] != name:
        raise ValueError(
            f"{data_dir} contains the {schema['config']!r} configuration, expected {name!r}; "
            f"prepare it with `python -m models.adult.prepare --config {name} --out {data_dir}`"
        )
    splits = {split: load_split(data_dir, split) for split in ("train", "valid", "test")}
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = [_build_source(plan, schema, splits, out_dir, config, console) for plan in SOURCE_SETS[name]]
    content = {
        "config": name,
        "tasks": {task: {"kind": info["kind"], "label": info["label"]} for task, info in schema["tasks"].items()},
        "rows": schema["rows"],
        "sources": sources,
    }
    write_text_atomic(out_dir / "sources.json", json.dumps(content, indent=2) + "\n")
    return content


def _table(content: dict[str, Any]) -> Table:
    table = Table(title=f"{content['config']} sources")
    for column in ("file", "kind", "architecture", "exporter", "opset", "params", "epochs", "test"):
        table.add_column(column, justify="right" if column in ("opset", "params", "epochs") else "left")
    for source in content["sources"]:
        ((metric, value),) = source["test"].items()
        table.add_row(
            source["file"],
            source["kind"],
            source["architecture"],
            source["exporter"],
            str(source["opset"]),
            f"{source['parameters']:,}",
            str(source["epochs"]),
            f"{metric} {value:.4f}",
        )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and export the Adult demo source sets.")
    parser.add_argument("--data", required=True, type=Path, help="folder containing the prepared adult/ and adult4/ folders")
    parser.add_argument("--out", required=True, type=Path, help="output folder; each set goes to OUT/<set>/")
    parser.add_argument("--sets", nargs="+", default=list(SOURCE_SETS), choices=list(SOURCE_SETS), help="source sets to build (default: all)")
    parser.add_argument("--quick", action="store_true", help="train 30 steps per source: checked files in seconds, not usable models")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a 2-core CPU these small models trained 1.6x faster on one thread than on two)",
    )
    args = parser.parse_args(argv)

    for name in args.sets:
        if not (args.data / name / "schema.json").is_file():
            parser.error(
                f"prepared data {args.data / name / 'schema.json'} not found; "
                f"run `python -m models.adult.prepare --config {name} --out {args.data / name}` first"
            )

    torch.set_num_threads(args.threads)
    # torch logs one warning per torchvision operator it cannot register when the dynamo exporter loads.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    config = QUICK_TRAINING if args.quick else TrainConfig()
    console = Console()
    if not console.is_terminal:
        # Rich wraps at 80 columns without a terminal, which would fold every table row into several lines.
        console.width = 120

    started = time.perf_counter()
    contents = [build_set(name, args.data / name, args.out / name, config, console) for name in args.sets]
    for content in contents:
        console.print(_table(content))
    count = sum(len(content["sources"]) for content in contents)
    console.print(f"built {count} sources into {args.out} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
