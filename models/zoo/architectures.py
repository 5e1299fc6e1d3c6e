"""Single-task tabular architectures of the source-model zoo.

Every model takes one tensor per feature column, in the order of
``FeatureSpec.names``: int64 ids of shape [B] for a categorical column, float32
values of shape [B] for a numeric one. It returns one task output: for a
binary task the probability [B, 1] of a final Sigmoid, for a multiclass task
the Softmax probabilities [B, C], for a regression task the value [B, 1].
``logit`` gives the pre-activation tensor that training losses use.

Architectures (``ARCHITECTURES``):
    mlp_deep   deep narrow MLP, hidden widths 64-64-32-32, BatchNorm and ReLU.
    mlp_wide   wide shallow MLP, hidden widths 256-128, ReLU and Dropout.
    dcn        cross network x_{l+1} = x0 * (W x_l + b) + x_l beside a deep
               tower, both outputs concatenated into a final linear layer.
    deepfm     first-order linear term + FM second-order term + deep branch
               over shared field embeddings, summed into the logit.
    autoint    multi-head self-attention layers over field embeddings
               [B, F, D] with residual connections, then flatten and an MLP.

Shape letters: B batch, F fields (feature columns), D embedding width,
H attention heads, C task outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "ARCHITECTURES",
    "KINDS",
    "FeatureSpec",
    "TaskSpec",
    "ZooModel",
    "build_model",
    "fm_second_order",
]

KINDS = ("binary", "multiclass", "regression")

# torch's N(0, 1) default makes the embeddings dwarf the standardised numerics
# and, in DeepFM, the FM term; 0.1 trained better on Adult for every architecture.
_EMBEDDING_INIT_STD = 0.1
# Width of each categorical embedding in the concatenated-input models
# (mlp_deep, mlp_wide, dcn). The largest Adult table, native-country, has 42 rows.
_CONCAT_EMBEDDING_DIM = 8


@dataclass(frozen=True)
class FeatureSpec:
    """Feature columns of a prepared data set, in graph input order."""

    names: tuple[str, ...]  # every feature column, in schema order
    vocab_sizes: dict[str, int]  # categorical column -> embedding rows (ids 0..n, 0 = unknown)

    @classmethod
    def from_schema(cls, schema: dict[str, Any]) -> FeatureSpec:
        categorical = schema["categorical"]
        return cls(
            names=tuple(schema["features"]),
            vocab_sizes={name: int(categorical[name]["vocab_size"]) for name in schema["features"] if name in categorical},
        )

    @property
    def categorical(self) -> tuple[str, ...]:
        return tuple(name for name in self.names if name in self.vocab_sizes)

    @property
    def numeric(self) -> tuple[str, ...]:
        return tuple(name for name in self.names if name not in self.vocab_sizes)


@dataclass(frozen=True)
class TaskSpec:
    """The one task a zoo model is trained for."""

    name: str  # task name, also the label column
    kind: str  # one of KINDS
    num_classes: int = 1  # output width: the class count for multiclass, else 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r} has unknown kind {self.kind!r}; expected one of {KINDS}")
        if self.kind == "multiclass" and self.num_classes < 2:
            raise ValueError(f"multiclass task {self.name!r} needs num_classes >= 2, got {self.num_classes}")
        if self.kind != "multiclass" and self.num_classes != 1:
            raise ValueError(f"{self.kind} task {self.name!r} has one output, got num_classes={self.num_classes}")

    @classmethod
    def from_schema(cls, schema: dict[str, Any], task: str) -> TaskSpec:
        if task not in schema["tasks"]:
            raise ValueError(f"task {task!r} is not in the {schema['config']!r} schema; choose one of {sorted(schema['tasks'])}")
        info = schema["tasks"][task]
        num_classes = len(info["classes"]) if info["kind"] == "multiclass" else 1
        return cls(name=task, kind=info["kind"], num_classes=num_classes)


class ZooModel(nn.Module):
    """Base of the zoo: column tensors in, one activated task output out."""

    architecture: str

    def __init__(self, features: FeatureSpec, task: TaskSpec) -> None:
        super().__init__()
        self.features = features
        self.task = task

    def logit(self, columns: Sequence[Tensor]) -> Tensor:
        """Return the task logit [B, C] (the value [B, 1] for regression)."""
        raise NotImplementedError

    def forward(self, *columns: Tensor) -> Tensor:
        if len(columns) != len(self.features.names):
            raise ValueError(f"{self.architecture} takes {len(self.features.names)} feature columns, got {len(columns)}")
        logit = self.logit(columns)
        if self.task.kind == "binary":
            return torch.sigmoid(logit)
        if self.task.kind == "multiclass":
            return torch.softmax(logit, dim=1)
        return logit

    def _split(self, columns: Sequence[Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        """Return the categorical ids by column name and the numerics stacked as [B, N]."""
        by_name = dict(zip(self.features.names, columns, strict=True))
        ids = {name: by_name[name] for name in self.features.categorical}
        numerics = torch.stack([by_name[name] for name in self.features.numeric], dim=1)
        return ids, numerics


def _mlp(widths: Sequence[int], *, batch_norm: bool = False, dropout: float = 0.0) -> nn.Sequential:
    """Linear layers between consecutive widths, each followed by [BatchNorm], ReLU and [Dropout]."""
    layers: list[nn.Module] = []
    for width_in, width_out in zip(widths[:-1], widths[1:]):
        layers.append(nn.Linear(width_in, width_out))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width_out))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def _init_embeddings(embeddings: nn.ModuleDict, std: float = _EMBEDDING_INIT_STD) -> None:
    for embedding in embeddings.values():
        nn.init.normal_(embedding.weight, std=std)


class _ConcatEmbedding(nn.Module):
    """Categorical embeddings concatenated with the raw numerics: [B, sum of widths]."""

    def __init__(self, features: FeatureSpec, dim: int = _CONCAT_EMBEDDING_DIM) -> None:
        super().__init__()
        self.embeddings = nn.ModuleDict({name: nn.Embedding(size, dim) for name, size in features.vocab_sizes.items()})
        _init_embeddings(self.embeddings)
        self.width = dim * len(features.categorical) + len(features.numeric)

    def forward(self, ids: dict[str, Tensor], numerics: Tensor) -> Tensor:
        parts = [self.embeddings[name](column) for name, column in ids.items()]
        return torch.cat([*parts, numerics], dim=1)


class _FieldEmbedding(nn.Module):
    """One D-wide vector per field: [B, F, D]; a numeric field is its value times a learned vector."""

    def __init__(self, features: FeatureSpec, dim: int) -> None:
        super().__init__()
        self.embeddings = nn.ModuleDict({name: nn.Embedding(size, dim) for name, size in features.vocab_sizes.items()})
        _init_embeddings(self.embeddings)
        self.numeric_vectors = nn.Parameter(torch.randn(len(features.numeric), dim) * 0.1)
        self.num_fields = len(features.names)

    def forward(self, ids: dict[str, Tensor], numerics: Tensor) -> Tensor:
        categorical = torch.stack([self.embeddings[name](column) for name, column in ids.items()], dim=1)  # B, Fc, D
        numeric = numerics.unsqueeze(2) * self.numeric_vectors  # B, Fn, D
        return torch.cat([categorical, numeric], dim=1)  # B, F, D


class MLPDeep(ZooModel):
    """Deep narrow MLP: four hidden layers 64-64-32-32 with BatchNorm."""

    architecture = "mlp_deep"

    def __init__(self, features: FeatureSpec, task: TaskSpec, hidden: Sequence[int] = (64, 64, 32, 32)) -> None:
        super().__init__(features, task)
        self.embedding = _ConcatEmbedding(features)
        self.trunk = _mlp([self.embedding.width, *hidden], batch_norm=True)
        self.output = nn.Linear(hidden[-1], task.num_classes)

    def logit(self, columns: Sequence[Tensor]) -> Tensor:
        x = self.embedding(*self._split(columns))
        return self.output(self.trunk(x))


class MLPWide(ZooModel):
    """Wide shallow MLP: two hidden layers 256-128."""

    architecture = "mlp_wide"

    def __init__(self, features: FeatureSpec, task: TaskSpec, hidden: Sequence[int] = (256, 128), dropout: float = 0.1) -> None:
        super().__init__(features, task)
        self.embedding = _ConcatEmbedding(features)
        self.trunk = _mlp([self.embedding.width, *hidden], dropout=dropout)
        self.output = nn.Linear(hidden[-1], task.num_classes)

    def logit(self, columns: Sequence[Tensor]) -> Tensor:
        x = self.embedding(*self._split(columns))
        return self.output(self.trunk(x))


class _CrossLayer(nn.Module):
    """One DCN-v2 cross layer: x_{l+1} = x0 * (W x_l + b) + x_l."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x0: Tensor, x: Tensor) -> Tensor:
        return x0 * self.linear(x) + x


class DCN(ZooModel):
    """Deep & Cross Network: a cross network beside a deep tower, concatenated into a linear layer."""

    architecture = "dcn"

    def __init__(self, features: FeatureSpec, task: TaskSpec, cross_layers: int = 3, hidden: Sequence[int] = (128, 64, 32)) -> None:
        super().__init__(features, task)
        self.embedding = _ConcatEmbedding(features)
        width = self.embedding.width
        self.cross = nn.ModuleList([_CrossLayer(width) for _ in range(cross_layers)])
        self.deep = _mlp([width, *hidden])
        self.output = nn.Linear(width + hidden[-1], task.num_classes)

    def logit(self, columns: Sequence[Tensor]) -> Tensor:
        x0 = self.embedding(*self._split(columns))
        crossed = x0
        for layer in self.cross:
            crossed = layer(x0, crossed)
        return self.output(torch.cat([crossed, self.deep(x0)], dim=1))


def fm_second_order(v: Tensor) -> Tensor:
    """Return the FM pairwise term sum_{i<j} <v_i, v_j> of field embeddings [B, F, D] as [B, 1].

    Computed in O(F D) as 0.5 * ((sum_f v_f)^2 - sum_f v_f^2), summed over D.
    """
    square_of_sum = v.sum(dim=1).pow(2)  # B, D
    sum_of_squares = v.pow(2).sum(dim=1)  # B, D
    return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1, keepdim=True)


class DeepFM(ZooModel):
    """DeepFM: first-order term + FM second-order term + deep branch, summed into the logit."""

    architecture = "deepfm"

    def __init__(self, features: FeatureSpec, task: TaskSpec, dim: int = 8, hidden: Sequence[int] = (128, 64, 32)) -> None:
        super().__init__(features, task)
        # The FM term is one scalar per row, so it cannot separate classes: a softmax ignores a shift shared by all logits.
        if task.kind == "multiclass":
            raise ValueError(f"deepfm supports binary and regression tasks, not the multiclass task {task.name!r}")
        self.fields = _FieldEmbedding(features, dim)
        self.first_order = nn.ModuleDict({name: nn.Embedding(size, 1) for name, size in features.vocab_sizes.items()})
        # Seven N(0, 1) first-order weights would start the logit far from zero.
        _init_embeddings(self.first_order, std=0.01)
        self.first_order_numeric = nn.Linear(len(features.numeric), 1)
        self.deep = _mlp([len(features.names) * dim, *hidden])
        self.deep_output = nn.Linear(hidden[-1], 1)

    def logit(self, columns: Sequence[Tensor]) -> Tensor:
        ids, numerics = self._split(columns)

        # first order: one weight per category id plus a linear term over the numerics
        first = self.first_order_numeric(numerics)  # B, 1
        for name, column in ids.items():
            first = first + self.first_order[name](column)

        v = self.fields(ids, numerics)  # B, F, D
        second = fm_second_order(v)  # B, 1
        deep = self.deep_output(self.deep(v.flatten(1)))  # B, 1
        return first + second + deep


class _SelfAttention(nn.Module):
    """AutoInt interacting layer: multi-head self-attention over fields plus a projected residual, then ReLU."""

    def __init__(self, num_fields: int, dim_in: int, dim_out: int, heads: int) -> None:
        super().__init__()
        if dim_out % heads:
            raise ValueError(f"attention width {dim_out} is not divisible by {heads} heads")
        self.num_fields = num_fields
        self.heads = heads
        self.head_dim = dim_out // heads
        self.query = nn.Linear(dim_in, dim_out, bias=False)
        self.key = nn.Linear(dim_in, dim_out, bias=False)
        self.value = nn.Linear(dim_in, dim_out, bias=False)
        self.residual = nn.Linear(dim_in, dim_out, bias=False)

    def _heads(self, x: Tensor) -> Tensor:
        # A -1 batch keeps the export free of Shape ops: F, H and the head width are constants.
        return x.reshape(-1, self.num_fields, self.heads, self.head_dim).transpose(1, 2)  # B, H, F, D/H

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        # The scores are kept as [key, query] so the softmax runs over dim 2: torch 2.13's CPU softmax over a
        # short last dim (F = 13) is about 4x slower, forward and backward, than over an inner one.
        scores = torch.matmul(k, q.transpose(2, 3)) / self.head_dim**0.5  # B, H, F key, F query
        weights = torch.softmax(scores, dim=2).transpose(2, 3)  # B, H, F query, F key
        attended = torch.matmul(weights, v)  # B, H, F, D/H
        merged = attended.transpose(1, 2).reshape(-1, self.num_fields, self.heads * self.head_dim)  # B, F, D
        return torch.relu(merged + self.residual(x))


class AutoInt(ZooModel):
    """AutoInt: stacked self-attention over field embeddings, flattened into an MLP."""

    architecture = "autoint"

    def __init__(
        self,
        features: FeatureSpec,
        task: TaskSpec,
        dim: int = 16,
        attention_layers: int = 3,
        heads: int = 2,
        hidden: Sequence[int] = (64,),
    ) -> None:
        super().__init__(features, task)
        num_fields = len(features.names)
        self.fields = _FieldEmbedding(features, dim)
        self.attention = nn.Sequential(*[_SelfAttention(num_fields, dim, dim, heads) for _ in range(attention_layers)])
        self.mlp = _mlp([num_fields * dim, *hidden])
        self.output = nn.Linear(hidden[-1], task.num_classes)

    def logit(self, columns: Sequence[Tensor]) -> Tensor:
        v = self.fields(*self._split(columns))  # B, F, D
        return self.output(self.mlp(self.attention(v).flatten(1)))


ARCHITECTURES: dict[str, Callable[[FeatureSpec, TaskSpec], ZooModel]] = {
    model.architecture: model for model in (MLPDeep, MLPWide, DCN, DeepFM, AutoInt)
}


def build_model(architecture: str, features: FeatureSpec, task: TaskSpec) -> ZooModel:
    """Build an untrained zoo model; seed torch first for reproducible weights."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[architecture](features, task)
