"""Run every benchmark in turn and write benchmarks/results/summary.md against the targets.

Run (what `make bench` and `make bench-quick` call, after `make sources`):
    python -m benchmarks.run
    python -m benchmarks.run --quick
    python -m benchmarks.run --only inference training    # rerun some parts; the summary reads the others' last results

Parts, in order, each in its own process:

    quality     benchmarks.quality: sources, ensemble, fused graph and peers (it also
                compiles the fused graphs that the inference part times)
    inference   benchmarks.inference on the adult set (and adult4 unless --quick)
    training    benchmarks.training: AKF against MMoE
    scale       benchmarks.scale: compile time per stage against rows and sources

A part that fails is reported in the summary and makes the exit status 1;
the parts after it still run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.common import BENCH_OUT, RESULTS, machine, machine_line, python_command, say
from akfc.atomic import write_text_atomic

__all__ = ["PARTS", "TARGETS", "main"]

PARTS = ("quality", "inference", "training", "scale")
# The targets the summary reports against; a figure is met only when it satisfies its bound.
TARGETS = {
    "quality": "fused test AUC >= the best peer's, on every task (adult set, mean over seeds)",
    "inference_1024": "fused <= 1.15x separate sessions at batch 1024 (CPU, every intra-op thread count)",
    "inference_1": "fused <= 0.5x separate sessions at batch 1 (CPU, every intra-op thread count)",
    "training": "AKF training throughput >= 1.0x MMoE's at equal batch (eager AKF)",
    "scale_rows": "compile time growth exponent <= 1.1 in rows",
    "scale_sources": "compile time growth exponent <= 1.0 in sources",
}


def _inference_sets(args: argparse.Namespace) -> tuple[str, ...]:
    return ("adult",) if args.quick else ("adult", "adult4")


def _commands(args: argparse.Namespace) -> dict[str, list[list[str]]]:
    quick = ["--quick"] if args.quick else []
    quality_work = BENCH_OUT / "quality"
    inference = []
    for name in _inference_sets(args):
        listing = json.loads((args.sources / name / "sources.json").read_text())
        sources = [str(args.sources / name / source["file"]) for source in listing["sources"]]
        inference.append(
            python_command(
                "benchmarks.inference", "--fused", str(quality_work / name / "seed0" / "fused.onnx"), "--sources", *sources,
                "--data", str(args.data / name / "test.parquet"), "--name", f"inference_{name}", *quick,
            )  # fmt: skip
        )
    return {
        "quality": [python_command("benchmarks.quality", "--data", str(args.data), "--sources", str(args.sources), "--work", str(quality_work), *quick)],
        "inference": inference,
        "training": [python_command("benchmarks.training", "--data", str(args.data / "adult"), "--sources", str(args.sources / "adult"), *quick)],
        "scale": [python_command("benchmarks.scale", *quick)],
    }


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _row(target: str, measured: str, met: bool | None, link: str) -> dict[str, Any]:
    return {"target": TARGETS[target], "measured": measured, "met": met, "details": link}


def _quality_rows(quality: dict[str, Any] | None) -> list[dict[str, Any]]:
    if quality is None:
        return [_row("quality", "no result", None, "quality.md")]
    targets = quality["sets"]["adult"]["targets"]
    measured = "; ".join(f"{task}: fused {t['fused']:.4f} vs {t['best_peer']} {t['best_peer_value']:.4f}" for task, t in targets.items())
    return [_row("quality", measured, all(t["met"] for t in targets.values()), "quality.md")]


def _inference_rows(results: dict[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    rows = []
    for batch, bound, key in ((1024, 1.15, "inference_1024"), (1, 0.5, "inference_1")):
        parts, met = [], True
        for name, result in results.items():
            if result is None:
                continue
            ratios = [r["ratio_to_separate"] for r in result["rows"] if r["device"] == "cpu" and r["batch"] == batch and r["way"] == "fused"]
            if not ratios:
                continue
            worst = max(ratios)
            parts.append(f"{name.removeprefix('inference_')}: {worst:.2f}x (worst of {len(ratios)} thread counts)")
            met = met and worst <= bound
        links = ", ".join(f"{name}.md" for name, result in results.items() if result is not None)
        rows.append(_row(key, "; ".join(parts) or "no result", met if parts else None, links or "inference_adult.md"))
    return rows


def _training_rows(training: dict[str, Any] | None) -> list[dict[str, Any]]:
    if training is None:
        return [_row("training", "no result", None, "training.md")]
    variants = training["variants"]
    measured = f"{training['target']['ratio']:.2f}x ({variants['akf']['rows_per_s']:,.0f} vs {variants['mmoe']['rows_per_s']:,.0f} rows/s)"
    if "akf_compiled" in variants:
        measured += f"; with torch.compile {variants['akf_compiled']['ratio_to_mmoe']:.2f}x"
    return [_row("training", measured, training["target"]["met"], "training.md")]


def _scale_rows(scale: dict[str, Any] | None) -> list[dict[str, Any]]:
    rows = []
    for axis in ("rows", "sources"):
        key = f"scale_{axis}"
        if scale is None:
            rows.append(_row(key, "no result", None, "scale.md"))
            continue
        sweep = scale["sweeps"][axis]
        xs = [run[axis] for run in sweep["runs"]]
        measured = f"{sweep['exponents']['total']:.2f} ({axis} {min(xs):,} to {max(xs):,})"
        rows.append(_row(key, measured, sweep["target"]["met"], "scale.md"))
    return rows


def _summary(args: argparse.Namespace, outcomes: dict[str, dict[str, Any]], seconds: float) -> dict[str, Any]:
    inference = {f"inference_{name}": _load(f"inference_{name}") for name in _inference_sets(args)}
    rows = [*_quality_rows(_load("quality")), *_inference_rows(inference), *_training_rows(_load("training")), *_scale_rows(_load("scale"))]
    return {"machine": machine(), "quick": args.quick, "only": args.only, "parts": outcomes, "targets": rows, "seconds": seconds}


def _markdown(summary: dict[str, Any]) -> list[str]:
    verdict = {True: "met", False: "not met", None: "no result"}
    lines = [
        "# akfc benchmarks: summary",
        "",
        machine_line(summary["machine"]),
        "",
    ]
    if summary["quick"]:
        lines += ["Quick run (`make bench-quick`): reduced sizes and repeats; the figures check that the benchmarks run and are not to be quoted.", ""]
    if summary["only"]:
        lines += [f"This run covered {', '.join(summary['only'])} only; the other figures come from the result files of an earlier run.", ""]
    lines += ["| target | measured | status | details |", "|---|---|---|---|"]
    for row in summary["targets"]:
        links = ", ".join(f"[{link.strip()}]({link.strip()})" for link in row["details"].split(","))
        lines.append(f"| {row['target']} | {row['measured']} | {verdict[row['met']]} | {links} |")
    lines += ["", "| part | exit status | seconds |", "|---|---:|---:|"]
    for part, outcome in summary["parts"].items():
        lines.append(f"| {part} | {outcome['returncode']} | {outcome['seconds']:.0f} |")
    lines += [
        "",
        f"Total wall time: {summary['seconds'] / 60:.1f} minutes. How to run the benchmarks and what each figure means: "
        "[docs/benchmarks.md](../../docs/benchmarks.md).",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("out"), help="folder containing the prepared adult/ and adult4/ folders")
    parser.add_argument("--sources", type=Path, default=Path("out/sources"), help="folder containing the adult/ and adult4/ source sets")
    parser.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts (default: all)")
    parser.add_argument("--quick", action="store_true", help="reduced sizes and repeats: a run of a few minutes that checks everything works")
    args = parser.parse_args(argv)
    for name in ("adult", "adult4"):
        if not (args.sources / name / "sources.json").is_file():
            parser.error(f"{args.sources / name / 'sources.json'} not found; run `make sources` first")

    started = time.perf_counter()
    commands = _commands(args)
    outcomes: dict[str, dict[str, Any]] = {}
    for part in args.only or PARTS:
        say(f"== {part} ==")
        part_started = time.perf_counter()
        returncode = 0
        for command in commands[part]:
            returncode = subprocess.run(command).returncode or returncode
        outcomes[part] = {"returncode": returncode, "seconds": time.perf_counter() - part_started}
        if returncode:
            say(f"{part} failed with exit status {returncode}; continuing with the next part")
    summary = _summary(args, outcomes, time.perf_counter() - started)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(RESULTS / "summary.md", "\n".join(_markdown(summary)) + "\n")
    say(f"wrote {RESULTS / 'summary.md'} ({summary['seconds'] / 60:.1f} minutes)")
    return 1 if any(outcome["returncode"] for outcome in outcomes.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
