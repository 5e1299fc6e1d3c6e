"""The source-model zoo: single-task torch models for the Adult data, exported to ONNX.

architectures  the five architectures (mlp_deep, mlp_wide, dcn, deepfm, autoint).
training       single-task training with AdamW and early stopping.
export         ONNX export with the legacy or the dynamo exporter, checked before writing.
tiny           every architecture briefly trained and exported, for tests.
"""

from __future__ import annotations

from models.zoo.architectures import ARCHITECTURES, KINDS, FeatureSpec, TaskSpec, ZooModel, build_model
from models.zoo.export import EXPORTERS, OUTPUT_NAMES, ExportCheckError, ExportResult, export_model
from models.zoo.tiny import build_tiny_zoo
from models.zoo.training import TrainConfig, TrainResult, metric_name, predict, score, train_model

__all__ = [
    "ARCHITECTURES",
    "EXPORTERS",
    "KINDS",
    "OUTPUT_NAMES",
    "ExportCheckError",
    "ExportResult",
    "FeatureSpec",
    "TaskSpec",
    "TrainConfig",
    "TrainResult",
    "ZooModel",
    "build_model",
    "build_tiny_zoo",
    "export_model",
    "metric_name",
    "predict",
    "score",
    "train_model",
]
