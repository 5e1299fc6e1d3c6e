"""Fusion quality: test metrics of the sources, their ensemble, the fused graph and multi-task peers trained from scratch.

Run (after `make sources`, which writes out/adult, out/adult4 and out/sources):
    python -m benchmarks.quality
    python -m benchmarks.quality --quick        # one seed, one epoch: a smoke run

Two source sets, both built by ``models.adult.build_sources``:

    adult    income and marital (binary), two sources each. Per seed the
             fused graph is compiled as `make demo` compiles it, with
             ``--seed S``. The peers (torch-rechub's Shared-Bottom, MMoE, PLE
             and AITM, and one single-task MLP per task) train from scratch
             with the same seed on the same splits and features.
             Each multi-task peer is sized to the fused model's parameter
             count (the sources' plus the fusion layers'), each single-task
             MLP to that count divided by the number of tasks (see
             ``benchmarks.peers`` for the training rules).
    adult4   income, marital (binary), hours (regression) and relationship
             (multiclass): sources, ensemble and fused graph only.
             torch-rechub's multi-task models end each task in a sigmoid or a
             plain value, so none predicts the multiclass task.

The sources are trained once (seed 0 of ``models.adult.build_sources``), so
their figures have no spread; the ensemble is the uniform mixture of each
task's sources. Figures are the mean and sample standard deviation over the
seeds of the test metric: AUC (binary), macro one-vs-rest AUC (multiclass),
RMSE of the standardised value (regression).

Writes benchmarks/results/quality.json, .md and .png; fused graphs go to out/bench/quality/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from akfc.metrics import HIGHER_IS_BETTER, PRIMARY_METRIC
from benchmarks.common import BENCH_OUT, machine, machine_line, mean_std, python_command, save_figure, say, write_results
from benchmarks.peers import MULTI_TASK_PEERS, PeerConfig, build_peer, fit_width, load_peer_data, rechub_features, train_peer

__all__ = ["compile_set", "main"]

PEER_NAMES = {"shared_bottom": "Shared-Bottom", "mmoe": "MMoE", "ple": "PLE", "aitm": "AITM", "mlp": "single-task MLP"}
FUSED = "akfc fused"
ENSEMBLE = "ensemble"


def compile_set(sources_dir: Path, data_dir: Path, output: Path, seed: int, options: dict[str, Any]) -> dict[str, Any]:
    """Compile every source of a set (as listed in its sources.json) in a subprocess; return the worker's result."""
    listing = json.loads((sources_dir / "sources.json").read_text())
    job = {
        "sources": [[source["task"], str(sources_dir / source["file"])] for source in listing["sources"]],
        "train": str(data_dir / "train.parquet"),
        "valid": str(data_dir / "valid.parquet"),
        "test": str(data_dir / "test.parquet"),
        "output": str(output),
        "options": {"seed": seed, **options},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    job_path, result_path = output.parent / "job.json", output.parent / "result.json"
    job_path.write_text(json.dumps(job, indent=2))
    subprocess.run(python_command("benchmarks.compile_worker", str(job_path), str(result_path)), check=True)
    return json.loads(result_path.read_text())


def _record(methods: dict[str, dict[str, Any]], method: str, family: str, task: str, metric: str, value: float, parameters: int | None = None) -> None:
    entry = methods.setdefault(method, {"family": family, "parameters": parameters, "metrics": {}})
    entry["metrics"].setdefault(task, {"metric": metric, "values": []})["values"].append(value)


def _fused_figures(methods: dict[str, dict[str, Any]], result: dict[str, Any], source_parameters: dict[str, int]) -> None:
    """Record one compile's test metrics of every source, the ensemble and the fused graph."""
    for task, entry in result["splits"]["test"]["tasks"].items():
        metric = PRIMARY_METRIC[entry["kind"]]
        for name, values in entry["sources"].items():
            _record(methods, f"source {name}", "source", task, metric, values[metric], source_parameters[name])
        if "ensemble" in entry:
            _record(methods, ENSEMBLE, "ensemble", task, metric, entry["ensemble"][metric], sum(source_parameters.values()))
        _record(methods, FUSED, "fused", task, metric, entry["fused"][metric], result["parameters"])


def _summarise(methods: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Add mean and std to every figure; return the methods ordered sources, ensemble, fused graph, peers."""
    for entry in methods.values():
        for figures in entry["metrics"].values():
            figures["mean"], figures["std"] = mean_std(figures["values"])
    order = ("source", "ensemble", "fused", "peer")
    return dict(sorted(methods.items(), key=lambda item: order.index(item[1]["family"])))


def _source_parameters(sources_dir: Path) -> dict[str, int]:
    listing = json.loads((sources_dir / "sources.json").read_text())
    return {Path(source["file"]).stem: source["parameters"] for source in listing["sources"]}


def _run_set(name: str, args: argparse.Namespace, seeds: list[int], options: dict[str, Any], peers: bool) -> dict[str, Any]:
    sources_dir, data_dir = args.sources / name, args.data / name
    schema = json.loads((data_dir / "schema.json").read_text())
    tasks = {task: info["kind"] for task, info in schema["tasks"].items()}
    methods: dict[str, dict[str, Any]] = {}
    source_parameters = _source_parameters(sources_dir)
    fused_runs = []
    for seed in seeds:
        say(f"quality {name}: compiling the fused graph, seed {seed}")
        result = compile_set(sources_dir, data_dir, args.work / name / f"seed{seed}" / "fused.onnx", seed, options)
        fused_runs.append({"seed": seed, "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"], "timings_s": result["timings_s"]})
        _fused_figures(methods, result, source_parameters)
        say(f"quality {name}: seed {seed} fused " + ", ".join(f"{t} {v['fused'][PRIMARY_METRIC[v['kind']]]:.4f}" for t, v in result["splits"]["test"]["tasks"].items()))
    fused_parameters = methods[FUSED]["parameters"]
    block: dict[str, Any] = {
        "tasks": tasks,
        "seeds": seeds,
        "fused_parameters": fused_parameters,
        "fused_trainable_parameters": result["trainable_parameters"],
        "fused_graph_initializer_parameters": result["graph_initializer_parameters"],
        "source_parameters": source_parameters,
        "fused_runs": fused_runs,
        "methods": methods,
    }
    if peers:
        block["peers"] = _train_peers(name, data_dir, schema, list(tasks), seeds, fused_parameters, methods, args)
    block["methods"] = _summarise(methods)
    return block


def _train_peers(name: str, data_dir: Path, schema: dict[str, Any], tasks: list[str], seeds: list[int], target: int, methods: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Train every peer for every seed; record test AUCs into `methods` and return sizes and epochs."""
    features = rechub_features(schema)
    splits = {split: load_peer_data(data_dir, split, schema, tasks) for split in ("train", "valid", "test")}
    config = PeerConfig(epochs=args.peer_epochs)
    plans = [(peer, tasks) for peer in MULTI_TASK_PEERS] + [("mlp", [task]) for task in tasks]
    sizes: dict[str, Any] = {}
    for peer, peer_tasks in plans:
        share = target if len(peer_tasks) == len(tasks) else target // len(tasks)
        width, count = fit_width(peer, features, len(peer_tasks), share)
        label = PEER_NAMES[peer] if peer != "mlp" else f"{PEER_NAMES[peer]} ({peer_tasks[0]})"
        sizes[label] = {"width": width, "parameters": count, "target": share, "best_epochs": [], "epochs_run": [], "seconds": []}
        for seed in seeds:
            torch.manual_seed(seed)
            model = build_peer(peer, features, len(peer_tasks), width)
            result = train_peer(label, model, peer_tasks, splits["train"], splits["valid"], splits["test"], config, seed, width)
            sizes[label]["best_epochs"].append(result.best_epoch)
            sizes[label]["epochs_run"].append(result.epochs_run)
            sizes[label]["seconds"].append(result.seconds)
            method = PEER_NAMES[peer]
            for task in peer_tasks:
                _record(methods, method, "peer", task, "auc", result.test[task]["auc"], count if len(peer_tasks) == len(tasks) else None)
            say(
                f"quality {name}: {label} seed {seed}: {count:,} parameters, best epoch {result.best_epoch} of {result.epochs_run}, "
                + ", ".join(f"{task} {result.test[task]['auc']:.4f}" for task in peer_tasks)
                + f" ({result.seconds:.0f} s)"
            )
    # The single-task MLPs are one method with a model per task; its size is their sum.
    mlp_labels = [label for label in sizes if label.startswith(PEER_NAMES["mlp"])]
    methods[PEER_NAMES["mlp"]]["parameters"] = sum(sizes[label]["parameters"] for label in mlp_labels)
    return sizes


def _targets(block: dict[str, Any]) -> dict[str, Any]:
    """Compare the fused graph's mean test metric with the best peer's, per task."""
    targets = {}
    for task, kind in block["tasks"].items():
        metric = PRIMARY_METRIC[kind]
        sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
        peers = {name: entry["metrics"][task]["mean"] for name, entry in block["methods"].items() if entry["family"] == "peer" and task in entry["metrics"]}
        if not peers:
            continue
        best = max(peers, key=lambda name: sign * peers[name])
        fused = block["methods"][FUSED]["metrics"][task]["mean"]
        targets[task] = {"metric": metric, "fused": fused, "best_peer": best, "best_peer_value": peers[best], "met": sign * fused >= sign * peers[best]}
    return targets


def _markdown(result: dict[str, Any]) -> list[str]:
    lines = ["# Fusion quality", "", machine_line(result["machine"]), ""]
    if result["quick"]:
        lines += ["Quick run (`--quick`): one seed and one epoch everywhere; not a measurement to quote.", ""]
    for name, block in result["sets"].items():
        tasks = list(block["tasks"])
        metrics = [PRIMARY_METRIC[block["tasks"][task]] for task in tasks]
        seeds = ", ".join(str(seed) for seed in block["seeds"])
        lines += [
            f"## {name}",
            "",
            f"Test split, mean ± standard deviation over seeds {seeds}. Fused model: {block['fused_parameters']:,} parameters "
            f"(the sources' and the fusion layers'), {block['fused_trainable_parameters']:,} of them trained by the fusion; "
            f"the written graph's initializers hold {block['fused_graph_initializer_parameters']:,}.",
            "",
            "| method | parameters | " + " | ".join(f"{task} {metric}" for task, metric in zip(tasks, metrics)) + " |",
            "|---|---:|" + "---:|" * len(tasks),
        ]
        for method, entry in block["methods"].items():
            cells = []
            for task in tasks:
                figures = entry["metrics"].get(task)
                cells.append("" if figures is None else f"{figures['mean']:.4f} ± {figures['std']:.4f}")
            parameters = f"{entry['parameters']:,}" if entry["parameters"] else ""
            lines.append(f"| {method} | {parameters} | " + " | ".join(cells) + " |")
        if "peers" in block:
            lines += ["", "| peer | width | parameters | target | best epochs | epochs run |", "|---|---:|---:|---:|---|---|"]
            for label, size in block["peers"].items():
                lines.append(
                    f"| {label} | {size['width']} | {size['parameters']:,} | {size['target']:,} | "
                    f"{', '.join(map(str, size['best_epochs']))} | {', '.join(map(str, size['epochs_run']))} |"
                )
        if block.get("targets"):
            lines += ["", "Target: the fused graph's mean test metric at least the best peer's on every task.", ""]
            for task, target in block["targets"].items():
                verdict = "met" if target["met"] else "not met"
                lines.append(f"- {task}: fused {target['fused']:.4f}, best peer {target['best_peer']} {target['best_peer_value']:.4f}: {verdict}")
        lines.append("")
    lines += [
        "Peers: torch-rechub models trained from scratch on the same prepared splits and features, AdamW (lr 1e-3), "
        "batch 512, at most 20 epochs, stopped when the mean relative improvement of the tasks' validation AUC has not "
        "risen for 3 epochs, best epoch restored; multi-task peers are sized to the fused model's parameter count and each "
        "single-task MLP to that count divided by the number of tasks. The akfc compile also stops each task on its own, "
        "which the peers do not.",
        "",
        f"Wall time of this benchmark: {result['seconds']:.0f} s.",
    ]
    return lines


def _plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(result["sets"].items())
    columns = max(len(block["tasks"]) for _, block in rows)
    figure, axes = plt.subplots(len(rows), columns, figsize=(4.2 * columns, 3.2 * len(rows)), squeeze=False)
    colours = {"source": "#8da0cb", "ensemble": "#66c2a5", "fused": "#fc8d62", "peer": "#b3b3b3"}
    for r, (name, block) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            tasks = list(block["tasks"])
            if c >= len(tasks):
                ax.axis("off")
                continue
            task = tasks[c]
            entries = [(method, entry) for method, entry in block["methods"].items() if task in entry["metrics"]]
            means = [entry["metrics"][task]["mean"] for _, entry in entries]
            stds = [entry["metrics"][task]["std"] for _, entry in entries]
            bars = ax.barh(range(len(entries)), means, xerr=stds, color=[colours[entry["family"]] for _, entry in entries])
            ax.bar_label(bars, fmt="%.4f", fontsize=6, padding=2)
            ax.set_yticks(range(len(entries)), [method for method, _ in entries], fontsize=7)
            spread = max(means) - min(means)
            ax.set_xlim(min(means) - spread * 0.5 - 1e-3, max(means) + spread * 0.5 + 1e-3)
            ax.set_title(f"{name}: {task} test {block['methods'][FUSED]['metrics'][task]['metric']}", fontsize=9)
            ax.invert_yaxis()
    figure.tight_layout()
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("out"), help="folder containing the prepared adult/ and adult4/ folders")
    parser.add_argument("--sources", type=Path, default=Path("out/sources"), help="folder containing the adult/ and adult4/ source sets")
    parser.add_argument("--work", type=Path, default=BENCH_OUT / "quality", help="folder for the fused graphs")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the adult set")
    parser.add_argument("--adult4-seeds", default="0,1,2", help="comma-separated seeds of the adult4 set")
    parser.add_argument("--peer-epochs", type=int, default=20, help="maximum epochs of every peer (default 20, akfc's default)")
    parser.add_argument("--name", default="quality", help="result file name under benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="seed 0 only, one epoch for compiles and peers")
    args = parser.parse_args(argv)
    for name in ("adult", "adult4"):
        if not (args.sources / name / "sources.json").is_file():
            parser.error(f"{args.sources / name / 'sources.json'} not found; run `make sources` first")
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    adult4_seeds = [0] if args.quick else [int(s) for s in args.adult4_seeds.split(",")]
    options = {"epochs": 1} if args.quick else {}
    if args.quick:
        args.peer_epochs = 1
    # Measured on a 2-core machine shared with other jobs: an MMoE epoch took 0.9 s on one torch thread, 6 to 10 s on two.
    torch.set_num_threads(1)

    started = time.perf_counter()
    result: dict[str, Any] = {"machine": machine(), "quick": args.quick, "sets": {}}
    result["sets"]["adult"] = _run_set("adult", args, seeds, options, peers=True)
    result["sets"]["adult4"] = _run_set("adult4", args, adult4_seeds, options, peers=False)
    for block in result["sets"].values():
        block["targets"] = _targets(block)
    result["seconds"] = time.perf_counter() - started
    paths = write_results(args.name, result, _markdown(result), lambda path: _plot(path, result))
    say(f"quality: wrote {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
