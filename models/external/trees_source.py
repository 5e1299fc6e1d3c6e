"""A gradient-boosted trees source: a LightGBM classifier converted with onnxmltools.

Run (after ``models.adult.prepare`` wrote DATA):
    python -m models.external.trees_source --data out/adult --out out/external/income_lightgbm.onnx

The model reads one packed float input ``features`` [N, F]: the prepared
feature columns in schema order (categorical ids as numbers), as LightGBM is
usually trained on a matrix. Its graph is one TreeEnsembleClassifier, so it
has no interior frontier and joins a fusion as a head-only source.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import numpy as np
import onnx

from akfc.atomic import write_atomic
from models.adult.prepare import load_schema, load_split
from models.external.torch_fit import BuiltSource

__all__ = ["INPUT_NAME", "build_lightgbm_source"]

INPUT_NAME = "features"
# The newest opset onnxmltools 1.16 converts LightGBM to; akfc lifts it to the common opset.
_OPSET = 15


def build_lightgbm_source(
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    task: str = "income",
    trees: int = 40,
    leaves: int = 15,
    seed: int = 0,
) -> BuiltSource:
    """Train a LightGBM classifier on the train split and write it with onnxmltools.

    Arguments:
        data_dir: a prepared Adult folder (``models.adult.prepare``).
        out: the ONNX file to write.
        task: the binary label column to train on.
        trees: boosting rounds.
        leaves: leaves per tree.
        seed: LightGBM's random_state.
    """
    import lightgbm
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    schema = load_schema(data_dir)
    train = load_split(data_dir, "train")
    features = list(schema["features"])
    matrix = np.stack([train[name].astype(np.float32) for name in features], axis=1)
    classifier = lightgbm.LGBMClassifier(n_estimators=trees, num_leaves=leaves, random_state=seed, n_jobs=1, verbose=-1)
    classifier.fit(matrix, train[task])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_lightgbm(
            classifier, initial_types=[(INPUT_NAME, FloatTensorType([None, len(features)]))], target_opset=_OPSET, zipmap=False
        )
    onnx.checker.check_model(model, full_check=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda tmp: onnx.save(model, tmp))
    return BuiltSource(out, {INPUT_NAME: features})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and convert the LightGBM source with onnxmltools.")
    parser.add_argument("--data", required=True, help="prepared Adult folder")
    parser.add_argument("--out", required=True, help="ONNX file to write")
    parser.add_argument("--task", default="income", help="binary label column")
    args = parser.parse_args(argv)
    built = build_lightgbm_source(args.data, args.out, task=args.task)
    print(f"wrote {built.path}; bind its input with")
    print(f"inputs = {{ {INPUT_NAME} = [" + ", ".join(f'"{c}"' for c in built.inputs[INPUT_NAME]) + "] }")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
