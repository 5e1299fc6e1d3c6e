"""Compile and evaluation reports: JSON, Markdown and PNG plots.

The JSON shape is shared by `akfc compile`'s report.json and `akfc eval --json`::

    {"tasks": {"<task>": {"kind": ..., "fused": {"auc": ...}, "ensemble": {...},
                          "sources": {"<source id>": {"auc": ...}}}}}

A compile report adds "fusion": per level, the mean intra-task gate weight of
each source and the mean inter-task attention between tasks on the
validation split.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only: no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402 -- the backend must be chosen before pyplot loads

from akfc.atomic import write_atomic, write_text_atomic
from akfc.metrics import HIGHER_IS_BETTER, PRIMARY_METRIC

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "draw_report",
    "json_text",
    "markdown_text",
    "metrics_table",
    "plot_report",
    "write_json",
    "write_markdown",
]

REPORT_SCHEMA_VERSION = 1


def json_text(report: Mapping[str, Any]) -> str:
    """Render the report as indented JSON, the content of report.json."""
    return json.dumps(report, indent=2, sort_keys=False) + "\n"


def write_json(path: str | os.PathLike[str], report: Mapping[str, Any]) -> None:
    """Write the report as JSON atomically."""
    write_text_atomic(path, json_text(report))


def metrics_table(report: Mapping[str, Any]) -> list[list[str]]:
    """Rows of the metrics table: task, model, then each metric of the task's kind (header row first)."""
    rows: list[list[str]] = []
    for task, entry in report["tasks"].items():
        names = list(entry["fused"]) if "fused" in entry else list(next(iter(entry["sources"].values())))
        rows.append(["task", "model", *names])
        models = [*[(source, values) for source, values in entry.get("sources", {}).items()]]
        if "ensemble" in entry:
            models.append(("ensemble", entry["ensemble"]))
        if "fused" in entry:
            models.append(("fused", entry["fused"]))
        for model, values in models:
            rows.append([task, model, *(f"{values[name]:.4f}" for name in names)])
    return rows


def write_markdown(path: str | os.PathLike[str], report: Mapping[str, Any], title: str = "akfc report") -> None:
    """Write the metrics table (and the fusion summary when present) as Markdown, atomically."""
    write_text_atomic(path, markdown_text(report, title))


def markdown_text(report: Mapping[str, Any], title: str = "akfc report") -> str:
    """Render the metrics table (and the fusion summary when present) as Markdown."""
    lines = [f"# {title}", ""]
    header: list[str] | None = None
    for row in metrics_table(report):
        if row[0] == "task":
            if header is not None:
                lines.append("")
            header = row
            lines += ["| " + " | ".join(row) + " |", "|" + "---|" * len(row)]
        else:
            lines.append("| " + " | ".join(row) + " |")
    fusion = report.get("fusion")
    if fusion:
        lines += ["", "## Fusion on the validation split", ""]
        for level, entry in enumerate(fusion["levels"], start=1):
            lines.append(f"Level {level}, mean gate weight per source:")
            for task, weights in entry["gates"].items():
                shares = ", ".join(f"{source} {weight:.3f}" for source, weight in weights.items())
                lines.append(f"- {task}: {shares}")
            tasks = list(entry["attention"])
            lines += ["", f"Level {level}, mean attention (row attends to column):", ""]
            lines += ["| | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
            for task in tasks:
                lines.append(f"| {task} | " + " | ".join(f"{entry['attention'][task][other]:.3f}" for other in tasks) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def plot_report(path: str | os.PathLike[str], report: Mapping[str, Any]) -> None:
    """Draw the report as a PNG file (see `draw_report`), written atomically."""
    write_atomic(path, lambda tmp: draw_report(tmp, report))


def draw_report(path: str | os.PathLike[str], report: Mapping[str, Any]) -> None:
    """Draw each task's primary metric per model as bars, and each level's attention as a heat map, into the PNG file `path`.

    The file is written in place; `plot_report` writes it atomically.
    """
    tasks = list(report["tasks"])
    fusion = report.get("fusion") or {"levels": []}
    panels = len(tasks) + len(fusion["levels"])
    columns = min(panels, 3)
    rows = math.ceil(panels / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False)
    flat = list(axes.flat)

    for ax, task in zip(flat, tasks):
        entry = report["tasks"][task]
        metric = PRIMARY_METRIC[entry["kind"]]
        labels, values, colours = [], [], []
        for source, metrics in entry.get("sources", {}).items():
            labels.append(source)
            values.append(metrics[metric])
            colours.append("#8da0cb")
        for name, colour in (("ensemble", "#66c2a5"), ("fused", "#fc8d62")):
            if name in entry:
                labels.append(name)
                values.append(entry[name][metric])
                colours.append(colour)
        ax.barh(labels, values, color=colours)
        low, high = min(values), max(values)
        margin = max((high - low) * 0.5, 0.002)
        ax.set_xlim(low - margin, high + margin)
        better = "higher" if HIGHER_IS_BETTER[metric] else "lower"
        ax.set_title(f"{task}: test {metric} ({better} is better)", fontsize=10)
        for y, value in enumerate(values):
            ax.text(value, y, f" {value:.4f}", va="center", fontsize=8)
        ax.tick_params(axis="both", labelsize=8)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))

    for index, entry in enumerate(fusion["levels"]):
        ax = flat[len(tasks) + index]
        names = list(entry["attention"])
        grid = [[entry["attention"][row][column] for column in names] for row in names]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(names)), names, fontsize=8, rotation=30)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        for r in range(len(names)):
            for c in range(len(names)):
                ax.text(c, r, f"{grid[r][c]:.2f}", ha="center", va="center", fontsize=8, color="white" if grid[r][c] < 0.5 else "black")
        ax.set_title(f"level {index + 1}: attention (row -> column)", fontsize=10)
        figure.colorbar(image, ax=ax, fraction=0.046)

    for ax in flat[panels:]:
        ax.axis("off")
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=110, format="png")
    finally:
        plt.close(figure)
