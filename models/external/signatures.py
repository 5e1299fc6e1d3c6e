"""Column-input sources with other signatures than the zoo's, and a tf2onnx-style renaming of any exported source.

Conventions covered:
    ids as int32 instead of int64;
    numeric inputs of shape [batch, 1] instead of [batch] (ids stay [batch]);
    a source that reads only a subset of the feature columns;
    tf2onnx-style names: every input and output name ends in ``:0`` and the
    outputs are generic ``Identity:0``, ``Identity_1:0``, ... tensors, so the
    spec binds inputs by name and names the task's output.

Run:
    python -m models.external.signatures --data out/adult --out out/external/income_int32.onnx --ids int32
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from torch import nn

from models.adult.prepare import load_schema, load_split
from models.external.torch_fit import BuiltSource, check_parity, export_torch, fit_binary

__all__ = ["ColumnMLP", "build_column_mlp", "rename_tf2onnx_style"]

_EMBEDDING_DIM = 4
_ID_TYPES = {"int32": (torch.int32, np.int32), "int64": (torch.int64, np.int64)}


class ColumnMLP(nn.Module):
    """One input per column, in `columns` order: ids through embeddings, numeric values as they are, then an MLP."""

    def __init__(self, columns: list[str], vocab_sizes: dict[str, int]) -> None:
        super().__init__()
        self.columns = columns
        self.categorical = [name for name in columns if name in vocab_sizes]
        self.embeddings = nn.ModuleDict({name.replace("-", "_"): nn.Embedding(vocab_sizes[name], _EMBEDDING_DIM) for name in self.categorical})
        width = len(self.categorical) * _EMBEDDING_DIM + len(columns) - len(self.categorical)
        self.layers = nn.Sequential(nn.Linear(width, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU())
        self.output = nn.Linear(8, 1)

    def forward(self, *values: torch.Tensor) -> torch.Tensor:
        parts = []
        for name, value in zip(self.columns, values):
            if name in self.categorical:
                parts.append(self.embeddings[name.replace("-", "_")](value.long()))  # [batch] ids -> [batch, E]
            else:
                parts.append(value.reshape(-1, 1))  # [batch] or [batch, 1] -> [batch, 1]
        return torch.sigmoid(self.output(self.layers(torch.cat(parts, dim=1))))  # [batch, 1]


def build_column_mlp(
    data_dir: str | os.PathLike[str],
    path: str | os.PathLike[str],
    task: str = "income",
    columns: list[str] | None = None,
    ids: str = "int64",
    numeric_rank: int = 1,
    steps: int = 60,
    seed: int = 0,
) -> BuiltSource:
    """Train a ColumnMLP briefly on one binary task and export it with one input per column, named as the column.

    Arguments:
        columns: the feature columns it reads; all of the schema's features by default.
        ids: "int32" or "int64", the type of the categorical inputs.
        numeric_rank: 1 for numeric inputs of shape [batch], 2 for [batch, 1].
    """
    if ids not in _ID_TYPES:
        raise ValueError(f"ids must be one of {sorted(_ID_TYPES)}, not {ids!r}")
    if numeric_rank not in (1, 2):
        raise ValueError(f"numeric_rank must be 1 or 2, not {numeric_rank}")
    schema = load_schema(data_dir)
    columns = list(columns) if columns is not None else list(schema["features"])
    vocab_sizes = {name: entry["vocab_size"] for name, entry in schema["categorical"].items()}
    id_dtype = _ID_TYPES[ids][1]

    def arrays(split: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = []
        for name in columns:
            if name in vocab_sizes:
                out.append(split[name].astype(id_dtype))
            else:
                values = split[name].astype(np.float32)
                out.append(values.reshape(-1, 1) if numeric_rank == 2 else values)
        return out

    train = [torch.from_numpy(a) for a in arrays(load_split(data_dir, "train"))]
    torch.manual_seed(seed)
    model = fit_binary(ColumnMLP(columns, vocab_sizes), lambda rows: tuple(t[rows] for t in train), load_split(data_dir, "train")[task], steps=steps, seed=seed)

    path = Path(path)
    test = arrays(load_split(data_dir, "test"))
    export_torch(model, tuple(torch.from_numpy(a[:8]) for a in test), columns, ["probability"], path)
    with torch.no_grad():
        expected = model(*(torch.from_numpy(a) for a in test)).numpy()
    check_parity(path, dict(zip(columns, test)), "probability", expected)
    return BuiltSource(path)


def rename_tf2onnx_style(source: BuiltSource, path: str | os.PathLike[str]) -> BuiltSource:
    """Rename a single-output source as tf2onnx names a Keras model's graph, with onnx-graphsurgeon; write it to `path`.

    Inputs become ``NAME:0``. The outputs become two Identity nodes' tensors:
    ``Identity:0`` is the logit (the Sigmoid's input) and ``Identity_1:0``
    the probability, so the task output must be named in the spec.
    Returns the file with the bindings ``{NAME:0: column}`` and ``output="Identity_1"``.
    """
    graph = gs.import_onnx(onnx.load(str(source.path)))
    if len(graph.outputs) != 1 or graph.outputs[0].inputs[0].op != "Sigmoid":
        raise ValueError(f"{source.path}: expected one output computed by a Sigmoid, found {[t.name for t in graph.outputs]}")
    inputs = {}
    for tensor in graph.inputs:
        column = source.inputs.get(tensor.name, tensor.name)
        tensor.name = f"{tensor.name}:0"
        inputs[tensor.name] = column
    probability = graph.outputs[0]
    logit = probability.inputs[0].inputs[0]
    outputs = []
    for index, tensor in enumerate((logit, probability)):
        name = "Identity" if index == 0 else f"Identity_{index}"
        # Interior tensors carry no type in a torch export; the logit has the probability's type and shape.
        renamed = gs.Variable(f"{name}:0", dtype=probability.dtype, shape=probability.shape)
        graph.nodes.append(gs.Node("Identity", name, inputs=[tensor], outputs=[renamed]))
        outputs.append(renamed)
    graph.outputs = outputs
    model = gs.export_onnx(graph.cleanup().toposort())
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    onnx.save(model, str(path))
    return BuiltSource(path, inputs=inputs, output="Identity_1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and export a column-input MLP with a chosen signature on prepared Adult data.")
    parser.add_argument("--data", required=True, help="prepared Adult folder")
    parser.add_argument("--out", required=True, help="ONNX file to write")
    parser.add_argument("--task", default="income", help="binary task to train for")
    parser.add_argument("--columns", nargs="+", help="feature columns to read (default: all)")
    parser.add_argument("--ids", default="int64", choices=sorted(_ID_TYPES), help="type of the id inputs")
    parser.add_argument("--numeric-rank", type=int, default=1, choices=(1, 2), help="1: numeric inputs [batch]; 2: [batch, 1]")
    parser.add_argument("--tf2onnx-names", action="store_true", help="rename inputs to NAME:0 and outputs to Identity:0, Identity_1:0")
    args = parser.parse_args(argv)
    out = Path(args.out)
    built = build_column_mlp(args.data, out, args.task, args.columns, args.ids, args.numeric_rank)
    if args.tf2onnx_names:
        built = rename_tf2onnx_style(built, out)
    if built.inputs:
        bindings = ", ".join(f"{json.dumps(name)} = {json.dumps(column)}" for name, column in built.inputs.items())
        print(f"wrote {built.path}; bind it with inputs = {{ {bindings} }} and output = {json.dumps(built.output)}")
    else:
        print(f"wrote {built.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
