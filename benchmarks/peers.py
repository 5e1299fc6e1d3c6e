"""Multi-task peers trained from scratch: torch-rechub's Shared-Bottom, MMoE, PLE and AITM, and a single-task MLP.

The peers see exactly what the fused graph's sources see: the prepared
columns of a folder written by ``models.adult.prepare`` (categorical ids as
``SparseFeature`` with 8-wide embeddings, standardised numerics as
``DenseFeature``). Each architecture has one width knob, and ``fit_width``
picks the width whose parameter count is closest to a target, so every peer
is compared at the fused model's parameter count (the sources' plus the
fusion layers').

Training copies akfc's rules (``akfc.train``): AdamW, batch 512 and at most
20 epochs. Training stops when the score has not risen for 3 epochs, where the
score is the mean over tasks of the relative improvement of the validation AUC
over its value before the first step. The best epoch's weights are restored.
Only binary tasks are supported, because torch-rechub's AITM is binary-only.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch_rechub.basic.features import DenseFeature, SparseFeature
from torch_rechub.basic.layers import MLP, EmbeddingLayer
from torch_rechub.models.multi_task import AITM, MMOE, PLE, SharedBottom

from akfc.data import read_table
from akfc.metrics import relative_improvement, task_metrics
from akfc.train import make_optimizer

__all__ = [
    "MULTI_TASK_PEERS",
    "PeerConfig",
    "PeerData",
    "PeerResult",
    "SingleTaskMLP",
    "build_peer",
    "fit_width",
    "load_peer_data",
    "parameter_count",
    "rechub_features",
    "train_peer",
]

MULTI_TASK_PEERS = ("shared_bottom", "mmoe", "ple", "aitm")
_EMBEDDING_DIM = 8
_MMOE_EXPERTS = 4
_MAX_WIDTH = 16384


@dataclass(frozen=True)
class PeerConfig:
    """Optimisation settings; epochs, patience and batch size are akfc's defaults."""

    epochs: int = 20
    patience: int = 3
    batch_size: int = 512
    lr: float = 1e-3  # torch-rechub's examples train their multi-task models at 1e-3
    weight_decay: float = 1e-4
    eval_batch_size: int = 8192


@dataclass
class PeerData:
    """One split as torch tensors: feature columns by name and binary labels by task."""

    columns: dict[str, Tensor]
    labels: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.labels.values())))

    def rows(self, index: Tensor | slice) -> dict[str, Tensor]:
        return {name: values[index] for name, values in self.columns.items()}


@dataclass
class PeerResult:
    """A trained peer: its best epoch, validation and test metrics, size and time."""

    name: str
    parameters: int
    width: int
    best_epoch: int
    epochs_run: int
    valid: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]]
    seconds: float
    epoch_seconds: list[float] = field(default_factory=list)


class SingleTaskMLP(nn.Module):
    """Embeddings and dense values concatenated, then torch-rechub's MLP and a sigmoid: one task's probability [B, 1]."""

    def __init__(self, features: Sequence[DenseFeature | SparseFeature], dims: Sequence[int]) -> None:
        super().__init__()
        self.features = list(features)
        self.embedding = EmbeddingLayer(self.features)
        self.mlp = MLP(sum(feature.embed_dim for feature in self.features), dims=list(dims))

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        return torch.sigmoid(self.mlp(self.embedding(x, self.features, squeeze_dim=True)))


def rechub_features(schema: Mapping[str, Any]) -> list[DenseFeature | SparseFeature]:
    """Return one torch-rechub feature per schema feature, in schema order."""
    categorical = schema["categorical"]
    return [
        SparseFeature(name, vocab_size=int(categorical[name]["vocab_size"]), embed_dim=_EMBEDDING_DIM)
        if name in categorical
        else DenseFeature(name)
        for name in schema["features"]
    ]


def build_peer(name: str, features: Sequence[DenseFeature | SparseFeature], tasks: int, width: int) -> nn.Module:
    """Build one peer whose hidden layers scale with `width`: towers get width // 4, bottoms and experts [width, width // 2]."""
    hidden = [width, max(width // 2, 2)]
    tower = {"dims": [max(width // 4, 2)]}
    features = list(features)
    if name == "shared_bottom":
        return SharedBottom(features, ["classification"] * tasks, {"dims": hidden}, [tower] * tasks)
    if name == "mmoe":
        return MMOE(features, ["classification"] * tasks, _MMOE_EXPERTS, {"dims": hidden}, [tower] * tasks)
    if name == "ple":
        return PLE(features, ["classification"] * tasks, n_level=2, n_expert_specific=1, n_expert_shared=1, expert_params={"dims": hidden}, tower_params_list=[tower] * tasks)
    if name == "aitm":
        return AITM(features, tasks, {"dims": hidden}, [tower] * tasks)
    if name == "mlp":
        if tasks != 1:
            raise ValueError(f"the single-task MLP serves one task, got {tasks}")
        return SingleTaskMLP(features, [*hidden, max(width // 4, 2)])
    raise ValueError(f"unknown peer {name!r}; choose one of {(*MULTI_TASK_PEERS, 'mlp')}")


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def fit_width(name: str, features: Sequence[DenseFeature | SparseFeature], tasks: int, target: int) -> tuple[int, int]:
    """Return the width whose parameter count is closest to `target`, and that count (bisection: counts grow with width)."""

    def count(width: int) -> int:
        return parameter_count(build_peer(name, features, tasks, width))

    low, high = 2, _MAX_WIDTH
    while high - low > 1:
        middle = (low + high) // 2
        if count(middle) < target:
            low = middle
        else:
            high = middle
    width = min((low, high), key=lambda w: abs(count(w) - target))
    return width, count(width)


def load_peer_data(folder: str | Path, split: str, schema: Mapping[str, Any], tasks: Sequence[str]) -> PeerData:
    """Read one prepared split: ids as int64, numerics as float32, labels per task."""
    table = read_table(Path(folder) / f"{split}.parquet")
    categorical = schema["categorical"]
    columns = {}
    for name in schema["features"]:
        values = table.column(name).to_numpy()
        columns[name] = torch.from_numpy(np.array(values, dtype=np.int64 if name in categorical else np.float32))
    labels = {task: table.column(task).to_numpy() for task in tasks}
    return PeerData(columns, labels)


@torch.no_grad()
def _predict(model: nn.Module, data: PeerData, batch_size: int) -> np.ndarray:
    model.eval()
    parts = [model(data.rows(slice(start, start + batch_size))) for start in range(0, len(data), batch_size)]
    return torch.cat(parts).numpy()


def _evaluate(model: nn.Module, data: PeerData, tasks: Sequence[str], batch_size: int) -> dict[str, dict[str, float]]:
    probabilities = _predict(model, data, batch_size)
    return {task: task_metrics("binary", data.labels[task], probabilities[:, t]) for t, task in enumerate(tasks)}


def train_peer(
    name: str,
    model: nn.Module,
    tasks: Sequence[str],
    train: PeerData,
    valid: PeerData,
    test: PeerData,
    config: PeerConfig,
    seed: int,
    width: int = 0,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> PeerResult:
    """Train a peer with akfc's early stopping; return its best epoch's validation and test metrics.

    Arguments:
        model: returns probabilities [B, len(tasks)] for a dict of column tensors.
        on_epoch: called with (epoch, validation score, seconds) after each epoch.
    """
    started = time.perf_counter()
    kinds = {task: "binary" for task in tasks}
    targets = {task: torch.from_numpy(np.asarray(train.labels[task], dtype=np.float32)) for task in tasks}
    optimizer = make_optimizer(list(model.parameters()), lr=config.lr, weight_decay=config.weight_decay)
    order = torch.Generator().manual_seed(seed)

    # 1. the starting point, as akfc measures it: validation metrics before any step
    baseline = _evaluate(model, valid, tasks, config.eval_batch_size)
    best = {"score": 0.0, "epoch": 0, "metrics": baseline, "state": copy.deepcopy(model.state_dict())}
    epoch_seconds = []
    epochs_run = 0

    # 2. epochs until the score has not improved for `patience` epochs
    for epoch in range(1, config.epochs + 1):
        if epoch - best["epoch"] > config.patience:
            break
        epoch_started = time.perf_counter()
        model.train()
        permutation = torch.randperm(len(train), generator=order)
        for start in range(0, len(train), config.batch_size):
            index = permutation[start : start + config.batch_size]
            if len(index) < 2:
                continue  # BatchNorm needs two rows
            probabilities = model(train.rows(index)).clamp(1e-7, 1 - 1e-7)
            loss = sum(nn.functional.binary_cross_entropy(probabilities[:, t], targets[task][index]) for t, task in enumerate(tasks))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        metrics = _evaluate(model, valid, tasks, config.eval_batch_size)
        score = relative_improvement(kinds, metrics, baseline)
        if score > best["score"]:
            best = {"score": score, "epoch": epoch, "metrics": metrics, "state": copy.deepcopy(model.state_dict())}
        epoch_seconds.append(time.perf_counter() - epoch_started)
        epochs_run = epoch
        if on_epoch is not None:
            on_epoch(epoch, score, epoch_seconds[-1])

    # 3. the best weights, measured on the test split
    model.load_state_dict(best["state"])
    test_metrics = _evaluate(model, test, tasks, config.eval_batch_size)
    return PeerResult(
        name=name,
        parameters=parameter_count(model),
        width=width,
        best_epoch=best["epoch"],
        epochs_run=epochs_run,
        valid=best["metrics"],
        test=test_metrics,
        seconds=time.perf_counter() - started,
        epoch_seconds=epoch_seconds,
    )
