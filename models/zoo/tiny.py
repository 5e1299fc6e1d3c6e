"""Tiny zoo: every architecture, briefly trained, exported with both exporters.

Test suites of graph passes and lowering need real exporter output of every
architecture without waiting for full training. ``build_tiny_zoo`` trains each
architecture for a few dozen steps on one task and exports the same weights
with the legacy and the dynamo exporter. Each export still passes the full
checks of ``export_model``, parity against torch included.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from models.adult.prepare import load_schema, load_split
from models.zoo.architectures import ARCHITECTURES, FeatureSpec, TaskSpec
from models.zoo.export import EXPORTERS, export_model
from models.zoo.training import TrainConfig, train_model

__all__ = ["TINY_TRAINING", "build_tiny_zoo"]

# Enough steps to move every weight away from its initial value, few enough to take well under a second each.
TINY_TRAINING = TrainConfig(max_epochs=1, max_steps=40)


def build_tiny_zoo(
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    task: str = "income",
    architectures: Iterable[str] = tuple(ARCHITECTURES),
    exporters: Iterable[str] = EXPORTERS,
) -> dict[tuple[str, str], Path]:
    """Train each architecture briefly on one task and export it with each exporter.

    Arguments:
        data_dir: a prepared Adult folder (``models.adult.prepare``).
        out_dir: folder for the files, named ``{task}_{architecture}_{exporter}.onnx``.
        task: the task in the folder's schema to train for.
        architectures: keys of ``ARCHITECTURES``; all by default.
        exporters: "legacy" and/or "dynamo"; both by default.

    Returns:
        {(architecture, exporter): path of the checked ONNX file}.
    """
    schema = load_schema(data_dir)
    train, valid, test = (load_split(data_dir, split) for split in ("train", "valid", "test"))
    features, task_spec = FeatureSpec.from_schema(schema), TaskSpec.from_schema(schema, task)
    exporters = tuple(exporters)
    paths: dict[tuple[str, str], Path] = {}
    for architecture in architectures:
        model = train_model(architecture, features, task_spec, train, valid, TINY_TRAINING).model
        for exporter in exporters:
            path = Path(out_dir) / f"{task}_{architecture}_{exporter}.onnx"
            paths[architecture, exporter] = export_model(model, path, exporter, test).path
    return paths
