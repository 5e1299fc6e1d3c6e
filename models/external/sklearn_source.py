"""A scikit-learn source: ColumnTransformer (one-hot on raw strings, scaling on numerics) and an MLP, via skl2onnx.

Run (after ``models.adult.prepare`` wrote DATA):
    python -m models.external.sklearn_source --data out/adult --out out/external/income_sklearn.onnx

The pipeline trains on a DataFrame whose columns carry the feature names, with
the raw text of each categorical feature (the ``<name>_raw`` columns of the
prepared data), as a user of scikit-learn would. skl2onnx makes one graph
input per DataFrame column: string [None, 1] for a categorical, float [None, 1]
for a numeric, named after the column with "-" turned into "_". The inputs
mapping returned with the file binds those names to the data columns.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import onnx

from akfc.atomic import write_atomic
from models.adult.prepare import load_schema, load_split
from models.external.torch_fit import BuiltSource

__all__ = ["build_sklearn_source"]

_OPSETS = {"": 18, "ai.onnx.ml": 3}


def build_sklearn_source(
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    task: str = "income",
    zipmap: bool = True,
    rows: int = 8000,
    hidden: tuple[int, ...] = (32, 16),
    max_iter: int = 30,
    seed: int = 0,
) -> BuiltSource:
    """Train the pipeline on the first `rows` train rows and write it with skl2onnx.

    Arguments:
        data_dir: a prepared Adult folder (``models.adult.prepare``).
        out: the ONNX file to write.
        task: the binary label column to train on.
        zipmap: keep skl2onnx's default ZipMap probability output (a sequence of
            maps); False writes a plain [N, 2] probability tensor instead.
        rows: train rows used; the first ones, so the result is deterministic.
        hidden: widths of the MLP's hidden layers.
        max_iter: epochs of the MLP's optimiser.
        seed: the MLP's random_state.
    """
    import pandas as pd
    from skl2onnx import to_onnx
    from sklearn.compose import ColumnTransformer
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    schema = load_schema(data_dir)
    train = load_split(data_dir, "train")
    if "raw" not in schema:
        raise ValueError(f"{data_dir}/schema.json lists no raw text columns; prepare the folder again with models.adult.prepare")
    categorical = [name for name in schema["features"] if name in schema["raw"]]
    numeric = [name for name in schema["features"] if name not in schema["raw"]]
    # The DataFrame a user would have: feature names as columns, categoricals as text.
    columns = {name: schema["raw"].get(name, name) for name in schema["features"]}
    frame = pd.DataFrame({name: train[column][:rows] for name, column in columns.items()})

    classifier = MLPClassifier(hidden, max_iter=max_iter, random_state=seed)
    pipeline = Pipeline([
        ("features", ColumnTransformer([
            ("categorical", OneHotEncoder(handle_unknown="ignore"), categorical),
            ("numeric", StandardScaler(), numeric),
        ])),
        ("classifier", classifier),
    ])  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipeline.fit(frame, train[task][:rows])

    options = None if zipmap else {id(classifier): {"zipmap": False}}
    model = to_onnx(pipeline, frame.iloc[:1], target_opset=_OPSETS, options=options)
    onnx.checker.check_model(model, full_check=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda tmp: onnx.save(model, tmp))
    # skl2onnx names the inputs after the DataFrame's columns, in order, with "-" and other characters replaced by "_".
    inputs = {value.name: columns[name] for value, name in zip(model.graph.input, frame.columns)}
    return BuiltSource(out, inputs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and convert the scikit-learn source with skl2onnx.")
    parser.add_argument("--data", required=True, help="prepared Adult folder")
    parser.add_argument("--out", required=True, help="ONNX file to write")
    parser.add_argument("--task", default="income", help="binary label column")
    parser.add_argument("--no-zipmap", action="store_true", help="write a plain probability tensor instead of a ZipMap")
    args = parser.parse_args(argv)
    built = build_sklearn_source(args.data, args.out, task=args.task, zipmap=not args.no_zipmap)
    print(f"wrote {built.path}; bind its inputs with")
    print("inputs = { " + ", ".join(f'{name} = "{column}"' for name, column in built.inputs.items() if name != column) + " }")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
