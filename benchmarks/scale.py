"""Compile scale: wall time per pipeline stage and peak memory as rows and sources grow, on synthetic data.

Run:
    python -m benchmarks.scale
    python -m benchmarks.scale --quick          # 20k to 80k rows: a smoke run

Data: ``benchmarks.synthetic`` (13 numeric and 26 categorical features, tasks
click, like, purchase and dwell). A row count is the total of the three
splits (80 / 10 / 10 %).

Sources: zoo architectures (``models.zoo``) trained for a fixed 2 epochs on
the train split of the source-sweep data set and exported with the legacy
and dynamo exporters in turn, as ``models.adult.build_sources`` does. They
are cached under out/bench/scale/ by a key of their inputs (generator, zoo
code, plan, training settings), so a second run reuses them.

Two sweeps, every compile in its own process (``benchmarks.compile_worker``)
so that its peak memory is that of its own process tree:

    rows      100k, 300k and 1M rows; 4 tasks with one source each.
    sources   2, 4 and 8 sources on 200k rows; tasks click and like with
              1, 2 and 4 sources each. The architectures are added so that
              each doubling adds a similar mix.

Every compile trains exactly one epoch (``epochs = 1``), so that runs are
comparable. It caches stem outputs beyond ``--cache-budget-mb`` in
memory-mapped files. The default budget is below the largest run's stem
outputs only, so that run alone takes the memory-mapped path. The results
list the outputs that did. The growth exponent k of time = c * x^k is fitted
by least squares on log-log axes, over the compile's own stage times (process
start and imports excluded).

Writes benchmarks/results/scale.json, .md and .png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    BENCH_OUT,
    bench_env,
    loglog_exponent,
    machine,
    machine_line,
    python_command,
    run_measured,
    save_figure,
    say,
    write_results,
)
from benchmarks.synthetic import cached_dataset

__all__ = ["ROWS_SWEEP", "SOURCES_SWEEP", "build_sources", "main"]

# (task, architecture); the rows sweep has one source per task.
ROWS_SWEEP = (("click", "dcn"), ("like", "mlp_deep"), ("purchase", "mlp_wide"), ("dwell", "deepfm"))
# Prefixes of 2, 4 and 8 make the sources sweep; each doubling adds DCN-, MLP- and DeepFM-sized work alike.
SOURCES_SWEEP = (
    ("click", "dcn"), ("like", "mlp_deep"),
    ("click", "mlp_wide"), ("like", "deepfm"),
    ("click", "mlp_deep"), ("like", "dcn"), ("click", "deepfm"), ("like", "mlp_wide"),
)  # fmt: skip
_TARGETS = {"rows": 1.1, "sources": 1.0}
_ZOO = Path(__file__).resolve().parents[1] / "models" / "zoo"


def _source_plan(max_sources: int) -> list[tuple[str, str, str]]:
    """List every distinct (task, architecture) of both sweeps with its exporter, legacy and dynamo in turn."""
    distinct = list(dict.fromkeys([*ROWS_SWEEP, *SOURCES_SWEEP[:max_sources]]))
    return [(task, architecture, ("legacy", "dynamo")[i % 2]) for i, (task, architecture) in enumerate(distinct)]


def _sources_key(data_dir: Path, plan: list[tuple[str, str, str]], epochs: int) -> str:
    digest = hashlib.sha256(data_dir.name.encode())
    for path in sorted(_ZOO.glob("*.py")):
        digest.update(path.read_bytes())
    digest.update(json.dumps([plan, epochs]).encode())
    return digest.hexdigest()[:12]


def build_sources(data_dir: Path, root: Path, epochs: int, max_sources: int = len(SOURCES_SWEEP)) -> Path:
    """Train and export the sources both sweeps need on a synthetic data set, unless a folder with the same key exists."""
    from models.adult.prepare import load_schema, load_split
    from models.zoo.architectures import FeatureSpec, TaskSpec
    from models.zoo.export import export_model
    from models.zoo.training import TrainConfig, train_model

    # The dynamo exporter logs one warning per torchvision operator it cannot register.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    plan = _source_plan(max_sources)
    folder = root / f"sources-{_sources_key(data_dir, plan, epochs)}"
    if (folder / "sources.json").is_file():
        say(f"scale: reusing the sources in {folder}")
        return folder
    schema = load_schema(data_dir)
    splits = {split: load_split(data_dir, split) for split in ("train", "valid", "test")}
    features = FeatureSpec.from_schema(schema)
    config = TrainConfig(max_epochs=epochs, patience=epochs, batch_size=512, seed=0)
    # Small models on a 2-core machine train faster on one torch thread (see models.adult.build_sources).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    listing = []
    try:
        for task, architecture, exporter in plan:
            started = time.perf_counter()
            result = train_model(architecture, features, TaskSpec.from_schema(schema, task), splits["train"], splits["valid"], config)
            path = folder / f"{task}_{architecture}.onnx"
            export_model(result.model, path, exporter, splits["test"])
            listing.append({"file": path.name, "task": task, "architecture": architecture, "exporter": exporter,
                            "valid": {result.metric: result.best_valid_metric}, "seconds": time.perf_counter() - started})  # fmt: skip
            say(f"scale: source {path.name} ({exporter}): valid {result.metric} {result.best_valid_metric:.4f}, {time.perf_counter() - started:.0f} s")
    finally:
        torch.set_num_threads(threads)
    # sources.json goes last: its presence marks a complete set.
    (folder / "sources.json").write_text(json.dumps({"data": str(data_dir), "epochs": epochs, "sources": listing}, indent=2))
    return folder


def _compile(name: str, plan: tuple[tuple[str, str], ...], sources: Path, data_dir: Path, work: Path, budget_mb: int) -> dict[str, Any]:
    """Compile one configuration in a measured subprocess; return its stage times, memory and sizes."""
    run_dir = work / "runs" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    job = {
        "sources": [[task, str(sources / f"{task}_{architecture}.onnx")] for task, architecture in plan],
        "train": str(data_dir / "train.parquet"),
        "valid": str(data_dir / "valid.parquet"),
        "test": str(data_dir / "test.parquet"),
        "output": str(run_dir / "fused.onnx"),
        "options": {"epochs": 1, "patience": 1, "seed": 0, "cache_budget_mb": budget_mb},
    }
    job_path, result_path = run_dir / "job.json", run_dir / "result.json"
    job_path.write_text(json.dumps(job, indent=2))
    run = run_measured(python_command("benchmarks.compile_worker", str(job_path), str(result_path)), env=bench_env())
    if run.returncode != 0:
        raise SystemExit(f"scale: the compile of {name} failed with exit status {run.returncode}; its output is above")
    result = json.loads(result_path.read_text())
    schema = json.loads((data_dir / "schema.json").read_text())
    return {
        "name": name,
        "rows": sum(schema["rows"].values()),
        "train_rows": schema["rows"]["train"],
        "sources": len(plan),
        "tasks": len({task for task, _ in plan}),
        "timings_s": result["timings_s"],
        "compile_s": sum(result["timings_s"].values()),
        "process_wall_s": run.wall_s,
        "peak_tree_rss_mb": run.peak_tree_rss_mb,
        "max_process_rss_mb": run.max_process_rss_mb,
        "memmapped_outputs": result["memmapped_outputs"],
        "parameters": result["parameters"],
    }


def _fits(runs: list[dict[str, Any]], axis: str) -> dict[str, Any]:
    """Fit the growth exponent of the total and of every stage along one axis (rows or sources)."""
    xs = [run[axis] for run in runs]
    fits = {"total": loglog_exponent(xs, [run["compile_s"] for run in runs])}
    for stage in runs[0]["timings_s"]:
        ys = [max(run["timings_s"][stage], 1e-6) for run in runs]
        fits[stage] = loglog_exponent(xs, ys)
    fits["peak_tree_rss_mb"] = loglog_exponent(xs, [run["peak_tree_rss_mb"] for run in runs])
    return fits


def _markdown(result: dict[str, Any]) -> list[str]:
    stages = list(result["sweeps"]["rows"]["runs"][0]["timings_s"])
    lines = [
        "# Compile scale",
        "",
        machine_line(result["machine"]),
        "",
        f"Synthetic data (benchmarks.synthetic, seed 0); sources trained {result['source_epochs']} epoch{'s' if result['source_epochs'] != 1 else ''} on "
        f"{result['source_rows']:,} rows; every compile trains 1 epoch; stem caches beyond {result['cache_budget_mb']} MB "
        "go to memory-mapped files." + (" Quick run: small sizes, not a measurement to quote." if result["quick"] else ""),
        "",
    ]
    for axis, sweep in result["sweeps"].items():
        lines += [
            f"## {axis}",
            "",
            "| rows | sources | tasks | " + " | ".join(stages) + " | total s | peak RSS MB (tree) | max RSS MB (one process) | memory-mapped stem outputs |",
            "|---:|---:|---:|" + "---:|" * len(stages) + "---:|---:|---:|---:|",
        ]
        for run in sweep["runs"]:
            lines.append(
                f"| {run['rows']:,} | {run['sources']} | {run['tasks']} | "
                + " | ".join(f"{run['timings_s'][stage]:.2f}" for stage in stages)
                + f" | {run['compile_s']:.1f} | {run['peak_tree_rss_mb']:.0f} | {run['max_process_rss_mb']:.0f} | {len(run['memmapped_outputs'])} |"
            )
        fits = sweep["exponents"]
        lines += [
            "",
            f"Growth exponent of the compile time in {axis}: {fits['total']:.2f} (target at most {_TARGETS[axis]}: "
            f"{'met' if fits['total'] <= _TARGETS[axis] else 'not met'}). Per stage: "
            + ", ".join(f"{stage} {fits[stage]:.2f}" for stage in stages)
            + f"; peak memory {fits['peak_tree_rss_mb']:.2f}.",
            "",
        ]
    largest = result["sweeps"]["rows"]["runs"][-1]
    if largest["memmapped_outputs"]:
        count = len(largest["memmapped_outputs"])
        lines.append(f"The {largest['rows']:,}-row compile memory-mapped {count} stem output{'s' if count != 1 else ''}: {', '.join(largest['memmapped_outputs'])}.")
    else:
        lines.append(f"NOTE: the {largest['rows']:,}-row compile kept every stem output in memory; lower --cache-budget-mb to exercise the memory-mapped path.")
    lines += ["", f"Wall time of this benchmark: {result['seconds']:.0f} s (data {result['data_s']:.0f} s, sources {result['sources_s']:.0f} s)."]
    return lines


def _plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (axis, sweep) in zip(axes, result["sweeps"].items()):
        runs = sweep["runs"]
        xs = [run[axis] for run in runs]
        ax.plot(xs, [run["compile_s"] for run in runs], marker="o", color="black", label=f"total (k = {sweep['exponents']['total']:.2f})")
        for stage in runs[0]["timings_s"]:
            ys = [run["timings_s"][stage] for run in runs]
            if max(ys) >= 0.05 * max(run["compile_s"] for run in runs):
                ax.plot(xs, ys, marker=".", label=f"{stage} (k = {sweep['exponents'][stage]:.2f})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(axis)
        ax.set_ylabel("seconds")
        ax.set_title(f"compile time against {axis}")
        ax.legend(fontsize=7)
    ax = axes[2]
    for axis, sweep in result["sweeps"].items():
        runs = sweep["runs"]
        labels = [f"{axis} sweep: {run['rows'] // 1000}k rows, {run['sources']} sources" for run in runs]
        ax.barh(labels, [run["peak_tree_rss_mb"] for run in runs], label=axis)
    ax.set_xlabel("peak resident memory of the process tree, MB")
    ax.legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="100000,300000,1000000", help="comma-separated total row counts of the rows sweep")
    parser.add_argument("--sources-rows", type=int, default=200_000, help="rows of the sources sweep, whose train split also trains the sources")
    parser.add_argument("--sources", default="2,4,8", help="comma-separated source counts of the sources sweep (at most 8)")
    parser.add_argument("--source-epochs", type=int, default=2, help="training epochs of every source")
    # The zoo's stems output 884 bytes per row in one tensor, or 832 in the largest of DeepFM's three, which akfc
    # budgets as three of that size. At 640 MiB the 300k-row run (240k train rows, at most 571 MiB) stays in
    # memory, and the 1M-row run (800k train rows, from 674 MiB) goes to memory-mapped files.
    parser.add_argument("--cache-budget-mb", type=int, default=640, help="stem cache budget of every compile, MB (default 640)")
    parser.add_argument("--work", type=Path, default=BENCH_OUT / "scale", help="folder for data, sources and fused graphs")
    parser.add_argument("--name", default="scale", help="result file name under benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="rows 20k and 40k; 2 and 4 sources on 20k rows; sources trained 1 epoch; 48 MB budget")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.sources_rows, args.sources, args.source_epochs, args.cache_budget_mb = "20000,40000", 20_000, "2,4", 1, 48
    row_counts = [int(r) for r in args.rows.split(",")]
    source_counts = [int(s) for s in args.sources.split(",")]
    if max(source_counts) > len(SOURCES_SWEEP):
        parser.error(f"--sources goes up to {len(SOURCES_SWEEP)}, got {max(source_counts)}")
    started = time.perf_counter()

    # 1. data and sources, cached by their inputs
    say(f"scale: data sets of {', '.join(f'{r:,}' for r in sorted({*row_counts, args.sources_rows}))} rows")
    data = {rows: cached_dataset(args.work / "data", rows) for rows in sorted({*row_counts, args.sources_rows})}
    data_s = time.perf_counter() - started
    sources = build_sources(data[args.sources_rows], args.work, args.source_epochs, max(source_counts))
    sources_s = time.perf_counter() - started - data_s

    # 2. the sweeps
    sweeps: dict[str, dict[str, Any]] = {"rows": {"runs": []}, "sources": {"runs": []}}
    for rows in row_counts:
        say(f"scale: compiling {len(ROWS_SWEEP)} sources on {rows:,} rows")
        run = _compile(f"rows{rows}", ROWS_SWEEP, sources, data[rows], args.work, args.cache_budget_mb)
        sweeps["rows"]["runs"].append(run)
        say(f"scale: {rows:,} rows: {run['compile_s']:.1f} s, peak RSS {run['peak_tree_rss_mb']:.0f} MB, {len(run['memmapped_outputs'])} memory-mapped stem outputs")
    for count in source_counts:
        say(f"scale: compiling {count} sources on {args.sources_rows:,} rows")
        run = _compile(f"sources{count}", SOURCES_SWEEP[:count], sources, data[args.sources_rows], args.work, args.cache_budget_mb)
        sweeps["sources"]["runs"].append(run)
        say(f"scale: {count} sources: {run['compile_s']:.1f} s, peak RSS {run['peak_tree_rss_mb']:.0f} MB")
    for axis, sweep in sweeps.items():
        sweep["exponents"] = _fits(sweep["runs"], axis)
        sweep["target"] = {"max_exponent": _TARGETS[axis], "met": sweep["exponents"]["total"] <= _TARGETS[axis]}

    result = {
        "machine": machine(),
        "quick": args.quick,
        "source_epochs": args.source_epochs,
        "source_rows": args.sources_rows,
        "cache_budget_mb": args.cache_budget_mb,
        "sweeps": sweeps,
        "data_s": data_s,
        "sources_s": sources_s,
        "seconds": time.perf_counter() - started,
    }
    paths = write_results(args.name, result, _markdown(result), lambda path: _plot(path, result))
    say(f"scale: wrote {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
