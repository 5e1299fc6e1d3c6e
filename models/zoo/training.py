"""Single-task training of zoo models with early stopping on a validation metric.

Losses by task kind: BCE on the logit (binary), cross-entropy (multiclass),
MSE (regression). The validation metric is ROC AUC (binary), macro one-vs-rest
ROC AUC (multiclass) or RMSE (regression); the weights of the best epoch are
kept. Runs are deterministic for a fixed seed and thread count.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from models.zoo.architectures import FeatureSpec, TaskSpec, ZooModel, build_model

__all__ = [
    "EpochLog",
    "TrainConfig",
    "TrainResult",
    "higher_is_better",
    "metric_name",
    "predict",
    "score",
    "train_model",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; the defaults train every architecture well on Adult."""

    max_epochs: int = 40  # upper bound; early stopping usually ends a run first
    patience: int = 4  # epochs without a better validation metric before stopping
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    seed: int = 0  # seeds torch (weights, shuffling) and numpy
    max_steps: int | None = None  # stop after this many optimizer steps; set for quick test models


@dataclass(frozen=True)
class EpochLog:
    """One finished epoch."""

    epoch: int  # 1-based
    steps: int  # optimizer steps so far
    train_loss: float  # mean loss over the epoch's batches
    valid_metric: float


@dataclass
class TrainResult:
    """A trained model (in eval mode, best weights loaded) and how it got there."""

    model: ZooModel
    metric: str  # name of the validation metric: auc, macro_auc or rmse
    best_epoch: int
    best_valid_metric: float
    seconds: float
    history: list[EpochLog] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.history)


def metric_name(kind: str) -> str:
    """Return the name of the evaluation metric of a task kind."""
    return {"binary": "auc", "multiclass": "macro_auc", "regression": "rmse"}[kind]


def higher_is_better(kind: str) -> bool:
    return kind != "regression"


def score(kind: str, labels: np.ndarray, predictions: np.ndarray) -> float:
    """Compute the task metric from labels and activated outputs ([N, 1] or [N, C])."""
    if kind == "binary":
        return float(roc_auc_score(labels, predictions[:, 0]))
    if kind == "multiclass":
        return float(roc_auc_score(labels, predictions, multi_class="ovr", average="macro"))
    return float(np.sqrt(np.mean((predictions[:, 0].astype(np.float64) - labels) ** 2)))


def _columns(features: FeatureSpec, table: Mapping[str, np.ndarray]) -> list[Tensor]:
    missing = [name for name in features.names if name not in table]
    if missing:
        raise KeyError(f"feature columns {missing} are missing from the data table; it has {sorted(table)}")
    return [torch.from_numpy(np.array(table[name])) for name in features.names]


def _labels(task: TaskSpec, table: Mapping[str, np.ndarray]) -> Tensor:
    if task.name not in table:
        raise KeyError(f"label column {task.name!r} is missing from the data table; it has {sorted(table)}")
    labels = torch.from_numpy(np.array(table[task.name]))
    if task.kind == "multiclass":
        return labels.long()
    return labels.float().unsqueeze(1)


def _loss_function(kind: str) -> Callable[[Tensor, Tensor], Tensor]:
    if kind == "binary":
        return nn.functional.binary_cross_entropy_with_logits
    if kind == "multiclass":
        return nn.functional.cross_entropy
    return nn.functional.mse_loss


@torch.no_grad()
def predict(model: ZooModel, columns: list[Tensor], batch_size: int = 8192) -> np.ndarray:
    """Run the model in eval mode over all rows and return the activated outputs."""
    model.eval()
    rows = columns[0].shape[0]
    outputs = [model(*(column[start : start + batch_size] for column in columns)) for start in range(0, rows, batch_size)]
    return torch.cat(outputs).numpy()


def train_model(
    architecture: str,
    features: FeatureSpec,
    task: TaskSpec,
    train: Mapping[str, np.ndarray],
    valid: Mapping[str, np.ndarray],
    config: TrainConfig = TrainConfig(),
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> TrainResult:
    """Train one architecture on one task with AdamW and early stopping on the validation metric.

    Arguments:
        architecture: a key of ``ARCHITECTURES``.
        features, task: the inputs and the task, usually from the prepared schema.
        train, valid: prepared splits, one numpy array per column (``load_split``).
        config: optimisation settings.
        on_epoch: called after every epoch, for progress output.

    Returns:
        The model in eval mode with the weights of its best validation epoch.
    """
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    model = build_model(architecture, features, task)

    train_columns, train_labels = _columns(features, train), _labels(task, train)
    valid_columns, valid_labels = _columns(features, valid), valid[task.name]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_function = _loss_function(task.kind)
    shuffle = torch.Generator().manual_seed(config.seed)
    sign = 1.0 if higher_is_better(task.kind) else -1.0

    rows = train_labels.shape[0]
    if rows < config.batch_size:
        raise ValueError(f"the train split has {rows} rows, fewer than one batch of {config.batch_size}; lower batch_size")
    steps = 0
    best_state, best_epoch, best_metric = copy.deepcopy(model.state_dict()), 0, float("nan")
    history: list[EpochLog] = []
    for epoch in range(1, config.max_epochs + 1):
        # 1. one pass over the shuffled train split
        model.train()
        order = torch.randperm(rows, generator=shuffle)
        losses = []
        # A last batch of one row would break BatchNorm's batch statistics, so the remainder is dropped.
        for start in range(0, rows - config.batch_size + 1, config.batch_size):
            index = order[start : start + config.batch_size]
            loss = loss_function(model.logit([column[index] for column in train_columns]), train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            steps += 1
            if config.max_steps is not None and steps >= config.max_steps:
                break

        # 2. validate and keep the best weights
        metric = score(task.kind, valid_labels, predict(model, valid_columns))
        log = EpochLog(epoch=epoch, steps=steps, train_loss=float(np.mean(losses)), valid_metric=metric)
        history.append(log)
        logger.debug("%s/%s epoch %d: loss %.4f, valid %s %.4f", task.name, architecture, epoch, log.train_loss, metric_name(task.kind), metric)
        if on_epoch is not None:
            on_epoch(log)
        if best_epoch == 0 or sign * metric > sign * best_metric:
            best_state, best_epoch, best_metric = copy.deepcopy(model.state_dict()), epoch, metric

        # 3. stop early
        if epoch - best_epoch >= config.patience:
            break
        if config.max_steps is not None and steps >= config.max_steps:
            break

    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        model=model,
        metric=metric_name(task.kind),
        best_epoch=best_epoch,
        best_valid_metric=best_metric,
        seconds=time.perf_counter() - started,
        history=history,
    )
