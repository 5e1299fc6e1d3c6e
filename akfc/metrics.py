"""Per-task metrics by task kind, and the validation score that early stopping follows."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from sklearn import metrics as sk_metrics

__all__ = ["HIGHER_IS_BETTER", "PRIMARY_METRIC", "relative_improvement", "task_metrics"]

# The metric early stopping and reports lead with, per task kind.
PRIMARY_METRIC = {"binary": "auc", "multiclass": "auc", "regression": "rmse"}
HIGHER_IS_BETTER = {"auc": True, "accuracy": True, "logloss": False, "rmse": False, "mae": False}

_EPSILON = 1e-7


def task_metrics(kind: str, labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Compute the metrics of one task.

    Arguments:
        kind: "binary", "multiclass" or "regression".
        labels: (N,) class ids (binary: 0/1) or target values.
        predictions: (N,) or (N, 1) P(class 1) for binary, (N, C) class
            probabilities for multiclass, (N,) or (N, 1) values for regression.

    Returns:
        binary: auc, logloss, accuracy; multiclass: auc (macro one-vs-rest),
        logloss, accuracy; regression: rmse, mae.
    """
    labels = np.asarray(labels)
    predictions = np.asarray(predictions, dtype=np.float64)
    if kind == "binary":
        p = predictions.reshape(-1)
        clipped = np.clip(p, _EPSILON, 1 - _EPSILON)
        return {
            "auc": float(sk_metrics.roc_auc_score(labels, p)),
            "logloss": float(sk_metrics.log_loss(labels, clipped, labels=[0, 1])),
            "accuracy": float(np.mean((p >= 0.5) == (labels == 1))),
        }
    if kind == "multiclass":
        classes = np.arange(predictions.shape[1])
        # Renormalise: float32 probabilities may sum to 1 only within rounding, which sklearn rejects.
        p = np.clip(predictions, _EPSILON, 1.0)
        p = p / p.sum(axis=1, keepdims=True)
        # With two classes sklearn's one-vs-rest path turns into its binary one, which takes P(class 1) only.
        scores = p[:, 1] if len(classes) == 2 else p
        return {
            "auc": float(sk_metrics.roc_auc_score(labels, scores, multi_class="ovr", average="macro", labels=classes)),
            "logloss": float(sk_metrics.log_loss(labels, p, labels=classes)),
            "accuracy": float(np.mean(p.argmax(axis=1) == labels)),
        }
    if kind == "regression":
        y = predictions.reshape(-1)
        return {
            "rmse": float(math.sqrt(sk_metrics.mean_squared_error(labels, y))),
            "mae": float(sk_metrics.mean_absolute_error(labels, y)),
        }
    raise ValueError(f"unknown task kind {kind!r}")


def relative_improvement(kinds: Mapping[str, str], current: Mapping[str, Mapping[str, float]], baseline: Mapping[str, Mapping[str, float]]) -> float:
    """Return the mean over tasks of the relative improvement of each task's primary metric over the baseline.

    Positive is better for every kind: an AUC that rises and an RMSE that
    falls both count as improvement.
    """
    scores = []
    for task, kind in kinds.items():
        name = PRIMARY_METRIC[kind]
        now, then = current[task][name], baseline[task][name]
        change = (now - then) if HIGHER_IS_BETTER[name] else (then - now)
        scores.append(change / max(abs(then), _EPSILON))
    return float(np.mean(scores))
