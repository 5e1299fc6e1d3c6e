"""A packed-input source: one float input [batch, F] holding every feature in a fixed column order.

This is the DeepCTR convention: the model slices its one input tensor by
position, casts the categorical columns back to ids for the embedding lookups
and reads the numeric columns as they are. Fusing it needs the spec to bind the
input to an ordered list of data columns::

    [[source]]
    task = "marital"
    path = "marital_packed.onnx"
    inputs = { X = ["age", "workclass", "fnlwgt", ...] }   # the order of PACKED_COLUMNS

Run:
    python -m models.external.packed --data out/adult --out out/external/marital_packed.onnx
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.adult.prepare import load_schema, load_split
from models.external.torch_fit import BuiltSource, check_parity, export_torch, fit_binary

__all__ = ["PACKED_INPUT", "PackedMLP", "build_packed_mlp", "packed_columns"]

PACKED_INPUT = "X"
_EMBEDDING_DIM = 4


def packed_columns(schema: dict) -> list[str]:
    """Return the feature columns in the order of the packed input's columns: the schema's feature order."""
    return list(schema["features"])


class PackedMLP(nn.Module):
    """Embeddings of the categorical columns and the numeric columns, sliced from one input, into an MLP."""

    def __init__(self, columns: list[str], vocab_sizes: dict[str, int]) -> None:
        super().__init__()
        self.categorical = [i for i, name in enumerate(columns) if name in vocab_sizes]
        self.numeric = [i for i, name in enumerate(columns) if name not in vocab_sizes]
        self.embeddings = nn.ModuleList(nn.Embedding(vocab_sizes[columns[i]], _EMBEDDING_DIM) for i in self.categorical)
        width = len(self.categorical) * _EMBEDDING_DIM + len(self.numeric)
        self.layers = nn.Sequential(nn.Linear(width, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU())
        self.output = nn.Linear(8, 1)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:  # packed: [batch, F] float
        embedded = [table(packed[:, i].long()) for table, i in zip(self.embeddings, self.categorical)]
        x = torch.cat([*embedded, packed[:, self.numeric]], dim=1)
        return torch.sigmoid(self.output(self.layers(x)))  # [batch, 1]


def build_packed_mlp(
    data_dir: str | os.PathLike[str],
    path: str | os.PathLike[str],
    task: str = "marital",
    columns: list[str] | None = None,
    steps: int = 60,
    seed: int = 0,
) -> BuiltSource:
    """Train a PackedMLP briefly on one binary task of a prepared Adult folder and export it with one input ``X``.

    Arguments:
        columns: the feature columns in packed order; ``packed_columns(schema)`` by default.

    Returns the file and the binding ``{X: [columns in order]}`` that the spec needs.
    """
    schema = load_schema(data_dir)
    columns = list(columns) if columns is not None else packed_columns(schema)
    vocab_sizes = {name: entry["vocab_size"] for name, entry in schema["categorical"].items()}
    train, test = load_split(data_dir, "train"), load_split(data_dir, "test")

    def pack(split: dict[str, np.ndarray]) -> np.ndarray:
        return np.stack([split[name].astype(np.float32) for name in columns], axis=1)

    packed_train = torch.from_numpy(pack(train))
    torch.manual_seed(seed)
    model = fit_binary(PackedMLP(columns, vocab_sizes), lambda rows: (packed_train[rows],), train[task], steps=steps, seed=seed)

    path = Path(path)
    packed_test = pack(test)
    export_torch(model, (torch.from_numpy(packed_test[:8]),), [PACKED_INPUT], ["probability"], path)
    with torch.no_grad():
        expected = model(torch.from_numpy(packed_test)).numpy()
    check_parity(path, {PACKED_INPUT: packed_test}, "probability", expected)
    return BuiltSource(path, inputs={PACKED_INPUT: columns})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and export a packed-input MLP on prepared Adult data.")
    parser.add_argument("--data", required=True, help="prepared Adult folder")
    parser.add_argument("--out", required=True, help="ONNX file to write")
    parser.add_argument("--task", default="marital", help="binary task to train for")
    args = parser.parse_args(argv)
    built = build_packed_mlp(args.data, args.out, args.task)
    print(f"wrote {built.path}; bind it with inputs = {{ {PACKED_INPUT} = {json.dumps(built.inputs[PACKED_INPUT])} }}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
