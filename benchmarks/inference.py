"""Inference speed: a fused graph against its sources run separately and merged naively.

Run (after `make demo`):
    python -m benchmarks.inference --fused out/fused/adult/fused.onnx --sources out/sources/adult/*.onnx \
        --data out/adult/test.parquet --name inference_adult

Three ways to serve the same tasks, all in onnxruntime on the CPU with the same
thread settings, every session created before timing:

    separate  one session per source, run back to back (the baseline);
    merged    the sources joined into one graph with onnx.compose, no fusion;
    fused     the akfc graph.

For each batch size and intra-op thread count, each way runs at least
`--repeats` times after warm-up; the figure is the median time per row, and
the ratio is against "separate" in the same run. The roofline line divides the
fused graph's FLOPs per row by this machine's single-core float32 GEMM rate
(numpy matmul on large matrices) and reports the fraction achieved at the
largest batch.

Writes benchmarks/results/<name>.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.compose
import onnxruntime as ort

from akfc import __version__
from akfc.atomic import write_text_atomic
from akfc.data import bind_input, read_table
from akfc.passes.decompose import decompose
from akfc.passes.load import load_model
from akfc.passes.normalize import normalize
from akfc.passes.opset import unify_opsets
from akfc.serving import file_sha256, input_signatures, read_metadata

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"


def _session(model: onnx.ModelProto | str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _merged(sources: list[tuple[str, onnx.ModelProto]]) -> onnx.ModelProto:
    """Join the sources side by side into one graph, every name (inputs too) prefixed with the source id."""
    models = unify_opsets([model for _, model in sources])
    ir_version = max(model.ir_version for model in models)
    merged = None
    for (name, _), model in zip(sources, models):
        prefixed = onnx.compose.add_prefix(model, f"{name}/")
        prefixed.ir_version = ir_version
        merged = prefixed if merged is None else onnx.compose.merge_models(merged, prefixed, io_map=[])
    return merged


def _gemm_rate(seconds: float = 2.0) -> float:
    """Measure single-core float32 GEMM FLOP/s with numpy on 1024 x 1024 matrices."""
    from threadpoolctl import threadpool_limits  # scikit-learn's dependency; pins BLAS to one thread

    a = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((1024, 1024), dtype=np.float32)
    with threadpool_limits(limits=1):
        a @ b
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            runs += 1
        elapsed = time.perf_counter() - start
    return runs * 2 * 1024**3 / elapsed


def _time(run, repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "akfc": __version__,
    }


def _fused_flops(fused_path: str, sources: list[tuple[str, onnx.ModelProto]]) -> int:
    """FLOPs per row of the fused graph's source parts (from their decompositions); the AKF layers come on top."""
    total = 0
    for name, model in sources:
        normalized = normalize(model, name)
        total += decompose(normalized.model).flops
    del fused_path
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fused", required=True, help="fused ONNX graph from akfc compile")
    parser.add_argument("--sources", nargs="+", required=True, help="the fused graph's source ONNX files")
    parser.add_argument("--data", required=True, help="table to draw input rows from")
    parser.add_argument("--name", default="inference", help="result file name under benchmarks/results")
    parser.add_argument("--batches", default="1,64,1024,8192", help="comma-separated batch sizes")
    parser.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per figure (median reported)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke run")
    args = parser.parse_args(argv)
    repeats = 5 if args.quick else args.repeats

    fused = onnx.load(args.fused)
    metadata = read_metadata(fused, args.fused)
    by_hash = {source.sha256: source for source in metadata.sources}
    sources = []
    for path in args.sources:
        record = by_hash.get(file_sha256(path))
        if record is None:
            parser.error(f"{path} is not a source of {args.fused}")
        sources.append((record.name, load_model(path), record))
    table = read_table(args.data)
    largest = max(int(b) for b in args.batches.split(","))
    if table.num_rows < largest:
        parser.error(f"{args.data} has {table.num_rows} rows, fewer than the largest batch {largest}")

    # 1. inputs for each way of serving, bound once
    fused_feeds = {s.name: bind_input(table, s, s.name, args.data) for s in input_signatures(fused)}
    source_feeds = [
        {s.name: bind_input(table, s, record.inputs.get(s.name, s.name), args.data) for s in input_signatures(model)}
        for _, model, record in sources
    ]
    merged = _merged([(name, model) for name, model, _ in sources])
    merged_feeds = {
        f"{name}/{input_name}": values
        for (name, _, _), feeds in zip(sources, source_feeds)
        for input_name, values in feeds.items()
    }

    # 2. timings
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        fused_session = _session(fused, threads)
        merged_session = _session(merged, threads)
        separate = [_session(model, threads) for _, model, _ in sources]
        for batch in (int(b) for b in args.batches.split(",")):
            def cut(feeds):
                return {k: v[:batch] for k, v in feeds.items()}

            fused_batch, merged_batch = cut(fused_feeds), cut(merged_feeds)
            separate_batches = [cut(f) for f in source_feeds]
            timings = {
                "separate": _time(lambda: [s.run(None, f) for s, f in zip(separate, separate_batches)], repeats),
                "merged": _time(lambda: merged_session.run(None, merged_batch), repeats),
                "fused": _time(lambda: fused_session.run(None, fused_batch), repeats),
            }
            for way, seconds in timings.items():
                rows.append({
                    "threads": threads, "batch": batch, "way": way, "us_per_row": seconds / batch * 1e6,
                    "ratio_to_separate": seconds / timings["separate"],
                })  # fmt: skip
            print(f"threads {threads} batch {batch}: " + ", ".join(f"{w} {t / batch * 1e6:.2f} us/row" for w, t in timings.items()))

    # 3. the roofline fraction at the largest batch, one thread
    rate = _gemm_rate()
    flops = _fused_flops(args.fused, [(name, model) for name, model, _ in sources])
    fused_one = next(r for r in rows if r["threads"] == 1 and r["batch"] == largest and r["way"] == "fused")
    bound_us = flops / rate * 1e6
    result = {
        "machine": _machine(),
        "fused": args.fused,
        "sources": [name for name, _, _ in sources],
        "repeats": repeats,
        "rows": rows,
        "roofline": {
            "gemm_flops_per_second_single_core": rate,
            "source_flops_per_row": flops,
            "bound_us_per_row": bound_us,
            "fused_us_per_row": fused_one["us_per_row"],
            "fraction_of_bound": bound_us / fused_one["us_per_row"],
            "note": "FLOPs count the sources' components only; the AKF layers add to the work, so the fraction is a lower bound",
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / f"{args.name}.json", json.dumps(result, indent=2) + "\n")
    _write_markdown(RESULTS / f"{args.name}.md", result)
    _plot(RESULTS / f"{args.name}.png", result)
    print(f"wrote {RESULTS / args.name}.json, .md, .png")
    return 0


def _write_markdown(path: Path, result: dict[str, Any]) -> None:
    machine = result["machine"]
    lines = [
        f"# Inference: {Path(result['fused']).name}",
        "",
        f"{machine['cpu']}, {machine['cores']} cores; onnxruntime {machine['onnxruntime']}, akfc {machine['akfc']}; "
        f"median of {result['repeats']} runs.",
        "",
        "| threads | batch | way | us/row | ratio to separate |",
        "|---:|---:|---|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['threads']} | {row['batch']} | {row['way']} | {row['us_per_row']:.3f} | {row['ratio_to_separate']:.3f} |")
    roof = result["roofline"]
    lines += [
        "",
        f"Single-core float32 GEMM: {roof['gemm_flops_per_second_single_core'] / 1e9:.1f} GFLOP/s; the sources' components "
        f"take {roof['source_flops_per_row']:,} FLOPs per row, a bound of {roof['bound_us_per_row']:.3f} us/row. "
        f"The fused graph achieves {roof['fraction_of_bound']:.1%} of it (one thread, largest batch); {roof['note']}.",
    ]
    write_text_atomic(path, "\n".join(lines) + "\n")


def _plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from akfc.atomic import write_atomic

    thread_counts = sorted({row["threads"] for row in result["rows"]})
    figure, axes = plt.subplots(1, len(thread_counts), figsize=(5 * len(thread_counts), 3.8), squeeze=False)
    for ax, threads in zip(axes[0], thread_counts):
        for way, colour in (("separate", "#8da0cb"), ("merged", "#66c2a5"), ("fused", "#fc8d62")):
            points = [(row["batch"], row["us_per_row"]) for row in result["rows"] if row["threads"] == threads and row["way"] == way]
            ax.plot(*zip(*points), marker="o", label=way, color=colour)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("microseconds per row")
        ax.set_title(f"{threads} intra-op thread{'s' if threads > 1 else ''}")
        ax.legend()
    figure.tight_layout()
    try:
        write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
