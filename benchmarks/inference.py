"""Inference speed: a fused graph against its sources run separately and merged naively.

Run (after `make demo`, or on the graphs that benchmarks.quality compiles):
    python -m benchmarks.inference --fused out/fused/adult/fused.onnx --sources out/sources/adult/*.onnx \
        --data out/adult/test.parquet --name inference_adult

Three ways to serve the same tasks, all in onnxruntime with the same thread
settings, every session created before timing:

    separate  one session per source, run back to back (the baseline);
    merged    the sources joined into one graph with onnx.compose, no fusion;
    fused     the akfc graph.

On the CPU provider each batch size runs at each intra-op thread count (one
inter-op thread). When this onnxruntime has the CUDA provider, the same
batches run there too, with outputs copied back to the host as a plain
`session.run` does; otherwise the results say that the GPU was skipped.

Timing: after warm-up, the three ways run in turns, one call each per round,
so that a change of machine load hits all three alike. The figure is the
median time per row over at least `--repeats` rounds, and the ratio is
against "separate" in the same rounds.

Roofline: the fused graph's FLOPs per row (``akfc.passes.dataflow.analyze``
over the whole graph, fusion layers included) divided by this machine's
single-core float32 GEMM rate (numpy matmul of 1024 x 1024 matrices, BLAS
pinned to one thread) is the time a row would take at that rate. The
fraction achieved is that bound over the measured time per row at the
largest batch on one thread.

Writes benchmarks/results/<name>.json, .md and .png.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.compose
import onnxruntime as ort

from akfc.data import bind_input, read_table
from akfc.passes.dataflow import analyze
from akfc.passes.load import load_model
from akfc.passes.opset import unify_opsets
from akfc.serving import file_sha256, input_signatures, read_metadata
from benchmarks.common import machine, machine_line, save_figure, say, write_results

__all__ = ["main"]

WAYS = ("separate", "merged", "fused")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
_WARMUP = 5


def _session(model: onnx.ModelProto, provider: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    providers = [provider, _CPU] if provider == _CUDA else [_CPU]
    return ort.InferenceSession(model.SerializeToString(), options, providers=providers)


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
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency; pins BLAS to one thread

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


def _round_robin(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, float]]:
    """Time each call `repeats` times, taking turns; return per way the median, minimum and maximum seconds."""
    for _ in range(_WARMUP):
        for call in calls.values():
            call()
    samples: dict[str, list[float]] = {way: [] for way in calls}
    for _ in range(repeats):
        for way, call in calls.items():
            start = time.perf_counter()
            call()
            samples[way].append(time.perf_counter() - start)
    return {way: {"median": statistics.median(s), "min": min(s), "max": max(s)} for way, s in samples.items()}


def _graph_flops(model: onnx.ModelProto) -> int:
    """FLOPs per row of a whole graph: the sum over its live nodes, from an onnxruntime probe of its shapes."""
    flow = analyze(model)
    return sum(flow.node_flops[index] for index in flow.live)


def _cut(feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    return {name: np.ascontiguousarray(values[:batch]) for name, values in feeds.items()}


def _measure(
    provider: str,
    threads: int,
    batches: list[int],
    models: dict[str, onnx.ModelProto | list[onnx.ModelProto]],
    feeds: dict[str, dict[str, np.ndarray] | list[dict[str, np.ndarray]]],
    repeats: int,
) -> list[dict[str, Any]]:
    """Time the three ways at every batch size on one provider and thread count."""
    separate = [_session(model, provider, threads) for model in models["separate"]]
    merged = _session(models["merged"], provider, threads)
    fused = _session(models["fused"], provider, threads)
    device = "cuda" if provider == _CUDA else "cpu"
    rows = []
    for batch in batches:
        separate_batches = [_cut(f, batch) for f in feeds["separate"]]
        merged_batch, fused_batch = _cut(feeds["merged"], batch), _cut(feeds["fused"], batch)
        timings = _round_robin(
            {
                "separate": lambda: [session.run(None, f) for session, f in zip(separate, separate_batches)],
                "merged": lambda: merged.run(None, merged_batch),
                "fused": lambda: fused.run(None, fused_batch),
            },
            repeats,
        )
        for way in WAYS:
            seconds = timings[way]["median"]
            rows.append({
                "device": device, "threads": threads, "batch": batch, "way": way,
                "us_per_row": seconds / batch * 1e6, "min_us_per_row": timings[way]["min"] / batch * 1e6,
                "ratio_to_separate": seconds / timings["separate"]["median"],
            })  # fmt: skip
        say(
            f"inference {device} threads {threads} batch {batch}: "
            + ", ".join(f"{way} {timings[way]['median'] / batch * 1e6:.2f} us/row" for way in WAYS)
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fused", required=True, help="fused ONNX graph from akfc compile")
    parser.add_argument("--sources", nargs="+", required=True, help="the fused graph's source ONNX files")
    parser.add_argument("--data", required=True, help="table to draw input rows from")
    parser.add_argument("--name", default="inference", help="result file name under benchmarks/results")
    parser.add_argument("--batches", default="1,64,1024,8192", help="comma-separated batch sizes")
    parser.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts (CPU provider)")
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds per figure (median reported, at least 30 by default)")
    parser.add_argument("--quick", action="store_true", help="5 rounds per figure, for a smoke run")
    args = parser.parse_args(argv)
    repeats = 5 if args.quick else args.repeats
    batches = [int(b) for b in args.batches.split(",")]
    started = time.perf_counter()

    fused = onnx.load(args.fused)
    metadata = read_metadata(fused, args.fused)
    by_hash = {source.sha256: source for source in metadata.sources}
    sources = []
    for path in args.sources:
        record = by_hash.get(file_sha256(path))
        if record is None:
            parser.error(f"{path} is not a source of {args.fused} (its sha256 is not in the graph's akfc.sources metadata)")
        sources.append((record.name, load_model(path), record))
    table = read_table(args.data)
    largest = max(batches)
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
    models = {"separate": [model for _, model, _ in sources], "merged": merged, "fused": fused}
    feeds = {"separate": source_feeds, "merged": merged_feeds, "fused": fused_feeds}

    # 2. timings: every thread count on the CPU, then the GPU when onnxruntime has one
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        rows += _measure(_CPU, threads, batches, models, feeds, repeats)
    if _CUDA in ort.get_available_providers():
        rows += _measure(_CUDA, 1, batches, models, feeds, repeats)
        cuda_note = "CUDA: measured with CUDAExecutionProvider (outputs copied to the host by session.run)."
    else:
        cuda_note = f"CUDA: skipped, this onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers: {', '.join(ort.get_available_providers())})."
    say(f"inference: {cuda_note}")

    # 3. the roofline fraction at the largest batch, one thread
    rate = _gemm_rate()
    fused_flops = _graph_flops(fused)
    source_flops = sum(_graph_flops(model) for _, model, _ in sources)
    fused_one = next((r for r in rows if r["device"] == "cpu" and r["threads"] == 1 and r["batch"] == largest and r["way"] == "fused"), None)
    bound_us = fused_flops / rate * 1e6
    result = {
        "machine": machine(),
        "fused": args.fused,
        "sources": [name for name, _, _ in sources],
        "repeats": repeats,
        "quick": args.quick,
        "cuda": cuda_note,
        "rows": rows,
        "roofline": {
            "gemm_flops_per_second_single_core": rate,
            "fused_flops_per_row": fused_flops,
            "source_flops_per_row": source_flops,
            "bound_us_per_row": bound_us,
            "batch": largest,
            "fused_us_per_row": fused_one["us_per_row"] if fused_one else None,
            "fraction_of_bound": bound_us / fused_one["us_per_row"] if fused_one else None,
        },
        "seconds": time.perf_counter() - started,
    }
    paths = write_results(args.name, result, _markdown(result), lambda path: _plot(path, result))
    say(f"inference: wrote {', '.join(str(p) for p in paths)}")
    return 0


def _markdown(result: dict[str, Any]) -> list[str]:
    lines = [
        f"# Inference: {Path(result['fused']).name} ({', '.join(result['sources'])})",
        "",
        machine_line(result["machine"]),
        "",
        f"onnxruntime, one inter-op thread; median of {result['repeats']} round-robin runs after {_WARMUP} warm-up rounds."
        + (" Quick run: too few rounds to quote." if result["quick"] else ""),
        "",
        "| device | threads | batch | way | us/row (median) | us/row (min) | ratio to separate |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['device']} | {row['threads']} | {row['batch']} | {row['way']} | {row['us_per_row']:.3f} | "
            f"{row['min_us_per_row']:.3f} | {row['ratio_to_separate']:.3f} |"
        )
    roof = result["roofline"]
    lines += ["", result["cuda"], ""]
    if roof["fraction_of_bound"] is not None:
        lines.append(
            f"Roofline: single-core float32 GEMM runs at {roof['gemm_flops_per_second_single_core'] / 1e9:.1f} GFLOP/s. The fused graph "
            f"takes {roof['fused_flops_per_row']:,} FLOPs per row (its sources alone {roof['source_flops_per_row']:,}), so a row "
            f"cannot take less than {roof['bound_us_per_row']:.3f} us at that rate; at batch {roof['batch']} on one thread it takes "
            f"{roof['fused_us_per_row']:.3f} us, {roof['fraction_of_bound']:.1%} of the bound."
        )
    lines += ["", f"Wall time of this benchmark: {result['seconds']:.0f} s."]
    return lines


def _plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({(row["device"], row["threads"]) for row in result["rows"]})
    figure, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 3.8), squeeze=False)
    for ax, (device, threads) in zip(axes[0], settings):
        for way, colour in zip(WAYS, ("#8da0cb", "#66c2a5", "#fc8d62")):
            points = [(row["batch"], row["us_per_row"]) for row in result["rows"] if (row["device"], row["threads"]) == (device, threads) and row["way"] == way]
            ax.plot(*zip(*points), marker="o", label=way, color=colour)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("microseconds per row (median)")
        ax.set_title(f"{device}, {threads} intra-op thread{'s' if threads > 1 else ''}" if device == "cpu" else device)
        ax.legend()
    figure.tight_layout()
    save_figure(figure, path)


if __name__ == "__main__":
    raise SystemExit(main())
