"""Ranking sources trained with torch-rechub and exported with its own ONNX exporter (``CTRTrainer.export_onnx``).

As a torch-rechub user would: the prepared columns become ``SparseFeature``
(ids 1..n, 0 unknown, vocabulary sizes from schema.json) and ``DenseFeature``
(standardised floats) objects, ``CTRTrainer`` fits the model briefly and
``export_onnx`` writes the graph. With torch-rechub 0.9.0 and torch 2.13 the
export goes through the dynamo exporter at opset 18 and yields one input per
feature, named as the feature: ids int64 [batch], dense values float32
[batch, 1]; the output ``output`` is the probability of shape [batch]. The
names equal the data columns, so the spec needs no ``inputs`` bindings.

Run:
    python -m models.external.rechub_sources --data out/adult --out out/external --task marital
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from torch_rechub.basic.features import DenseFeature, SparseFeature
from torch_rechub.models.ranking import DCN, DeepFM, WideDeep
from torch_rechub.trainers import CTRTrainer
from torch_rechub.utils.data import DataGenerator

from models.adult.prepare import load_schema, load_split
from models.external.torch_fit import BuiltSource, check_parity

__all__ = ["RECHUB_MODELS", "build_rechub_source", "rechub_features"]

RECHUB_MODELS = ("deepfm", "dcn", "widedeep")
_EMBEDDING_DIM = 4
_MLP = {"dims": [32, 16], "dropout": 0.0, "activation": "relu"}
# A few dozen optimizer steps: enough to move every weight, far from a converged model.
_TRAIN_ROWS = 8192
_BATCH_SIZE = 256


def rechub_features(schema: dict) -> tuple[list[DenseFeature], list[SparseFeature]]:
    """Return torch-rechub feature objects for the schema's numeric and categorical columns, in schema order."""
    categorical = schema["categorical"]
    dense = [DenseFeature(name) for name in schema["features"] if name not in categorical]
    sparse = [SparseFeature(name, vocab_size=categorical[name]["vocab_size"], embed_dim=_EMBEDDING_DIM) for name in schema["features"] if name in categorical]
    return dense, sparse


def _model(kind: str, dense: list[DenseFeature], sparse: list[SparseFeature]) -> torch.nn.Module:
    if kind == "deepfm":
        return DeepFM(deep_features=dense + sparse, fm_features=sparse, mlp_params=_MLP)
    if kind == "dcn":
        return DCN(features=dense + sparse, n_cross_layers=2, mlp_params=_MLP)
    if kind == "widedeep":
        return WideDeep(wide_features=dense, deep_features=sparse, mlp_params=_MLP)
    raise ValueError(f"unknown torch-rechub model {kind!r}; choose one of {RECHUB_MODELS}")


def build_rechub_source(data_dir: str | os.PathLike[str], path: str | os.PathLike[str], kind: str = "deepfm", task: str = "marital", seed: int = 0) -> BuiltSource:
    """Train one torch-rechub ranking model for one epoch over the first rows of the train split and export it.

    Arguments:
        kind: "deepfm", "dcn" or "widedeep".
        task: a binary task of the prepared folder.
    """
    schema = load_schema(data_dir)
    dense, sparse = rechub_features(schema)
    columns = [feature.name for feature in dense + sparse]
    train, test = load_split(data_dir, "train"), load_split(data_dir, "test")
    torch.manual_seed(seed)
    model = _model(kind, dense, sparse)

    # 1. fit with the library's own data loaders and trainer
    x = {name: train[name][:_TRAIN_ROWS] for name in columns}
    x_test = {name: test[name] for name in columns}
    loader, _, _ = DataGenerator(x, train[task][:_TRAIN_ROWS]).generate_dataloader(x_test, test[task], x_test, test[task], batch_size=_BATCH_SIZE)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, contextlib.redirect_stdout(io.StringIO()):
        # The trainer prints per epoch and saves model.pth into model_path; neither is wanted here.
        trainer = CTRTrainer(model, n_epoch=1, model_path=scratch, device="cpu")
        trainer.fit(loader)
        # 2. export with the library's exporter, at its defaults
        trainer.export_onnx(str(path))

    # 3. check the file against the torch model on test rows, fed as its inputs declare
    declared = {value.name: len(value.type.tensor_type.shape.dim) for value in onnx.load(str(path)).graph.input}
    feeds = {name: test[name].reshape(-1, 1) if declared[name] == 2 else test[name] for name in columns}
    with torch.no_grad():
        expected = model({name: torch.from_numpy(np.array(test[name])) for name in columns}).numpy()
    check_parity(path, feeds, "output", expected)
    return BuiltSource(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train torch-rechub ranking models on prepared Adult data and export them with torch-rechub.")
    parser.add_argument("--data", required=True, help="prepared Adult folder")
    parser.add_argument("--out", required=True, help="folder for {task}_rechub_{model}.onnx")
    parser.add_argument("--task", default="marital", help="binary task to train for")
    parser.add_argument("--models", nargs="+", default=list(RECHUB_MODELS), choices=RECHUB_MODELS, help="models to build")
    args = parser.parse_args(argv)
    for kind in args.models:
        built = build_rechub_source(args.data, Path(args.out) / f"{args.task}_rechub_{kind}.onnx", kind, args.task)
        print(f"wrote {built.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
