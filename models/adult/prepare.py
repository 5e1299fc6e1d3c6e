"""Prepare the UCI Adult census data for the demo, the zoo and the tests.

Run:
    python -m models.adult.prepare --out out/adult
    python -m models.adult.prepare --config adult4 --out out/adult4

Writes train.parquet, valid.parquet, test.parquet and schema.json into the
output folder. The result depends only on the vendored CSV files: two runs
write byte-identical files.

Configurations:
    adult   tasks income and marital (both binary).
    adult4  tasks income and marital (binary), hours (regression: hours-per-week
            standardised) and relationship (multiclass, its 6 values). The
            features drop hours-per-week and relationship, so no label leaks
            into a source through its inputs.

Encoding:
    Categorical columns get ids 1..n from the sorted distinct values of
    adult.data (without "?"); "?" and values never seen in adult.data get 0.
    Numeric columns become float32; the capital columns go through log1p; all
    are standardised with the mean and standard deviation of the train split.
    Every categorical feature also keeps its text, stripped of surrounding
    spaces, in a string column named ``<name>_raw`` (RAW_SUFFIX), after the
    labels: ``workclass`` contains ids, ``workclass_raw`` the strings, and "?"
    stays "?". Sources that encode strings themselves (a scikit-learn
    OneHotEncoder converted with skl2onnx) read those; schema.json maps each
    categorical feature to its raw column under "raw".
    Train and valid come from one seeded permutation of adult.data (80 / 20);
    adult.test, in file order, is the test split.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from akfc.atomic import write_atomic

__all__ = [
    "CATEGORICAL",
    "CONFIGS",
    "DATA_DIR",
    "NUMERIC",
    "RAW_SUFFIX",
    "SPLITS",
    "load_schema",
    "load_split",
    "prepare",
]

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "adult"
SPLITS = ("train", "valid", "test")
CATEGORICAL = ("workclass", "education", "occupation", "relationship", "race", "sex", "native-country")
NUMERIC = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")
RAW_SUFFIX = "_raw"
_LOG1P = ("capital-gain", "capital-loss")
_UNKNOWN = "?"
_SPLIT_SEED = 2024
_TRAIN_FRACTION = 0.8

# Per configuration: the tasks (name -> kind) and the columns dropped from the
# features besides the class and marital-status columns that labels come from.
CONFIGS: dict[str, dict[str, Any]] = {
    "adult": {
        "tasks": {"income": "binary", "marital": "binary"},
        "dropped_features": (),
    },
    "adult4": {
        "tasks": {"income": "binary", "marital": "binary", "hours": "regression", "relationship": "multiclass"},
        "dropped_features": ("hours-per-week", "relationship"),
    },
}
_LABEL_SOURCES = ("class", "marital-status")


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    table = pa_csv.read_csv(path)
    columns: dict[str, np.ndarray] = {}
    for name in table.column_names:
        values = table.column(name).to_numpy(zero_copy_only=False)
        if values.dtype == object:
            values = np.array([str(v).strip() for v in values], dtype=object)
        columns[name] = values
    return columns


def _vocabulary(values: np.ndarray) -> list[str]:
    return sorted(set(values.tolist()) - {_UNKNOWN})


def _encode(values: np.ndarray, vocabulary: list[str]) -> np.ndarray:
    ids = {value: i + 1 for i, value in enumerate(vocabulary)}
    return np.array([ids.get(v, 0) for v in values.tolist()], dtype=np.int64)


def _income(values: np.ndarray) -> np.ndarray:
    # Some copies of adult.test end every class with a period (">50K.").
    return np.array([v.rstrip(".") == ">50K" for v in values.tolist()], dtype=np.int64)


def _split_rows(n: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(_SPLIT_SEED).permutation(n)
    cut = int(_TRAIN_FRACTION * n)
    return perm[:cut], perm[cut:]


def _standardisation(values: np.ndarray) -> tuple[float, float]:
    mean = float(values.mean(dtype=np.float64))
    std = float(values.std(dtype=np.float64))
    return mean, std if std > 0 else 1.0


def prepare(out_dir: str | os.PathLike[str], config: str = "adult", data_dir: str | os.PathLike[str] = DATA_DIR) -> dict[str, Any]:
    """Write the three splits and schema.json of one configuration; return the schema.

    Arguments:
        out_dir: folder to write into (created if missing).
        config: "adult" (2 binary tasks) or "adult4" (4 tasks of all three kinds).
        data_dir: folder holding adult.data.csv.gz and adult.test.csv.gz.
    """
    if config not in CONFIGS:
        raise ValueError(f"unknown Adult configuration {config!r}; choose one of {sorted(CONFIGS)}")
    spec = CONFIGS[config]
    data_dir = Path(data_dir)
    raw = {"data": _read_csv(data_dir / "adult.data.csv.gz"), "test": _read_csv(data_dir / "adult.test.csv.gz")}
    train_rows, valid_rows = _split_rows(len(raw["data"]["age"]))
    rows = {"train": train_rows, "valid": valid_rows, "test": None}

    # 1. the feature list, in CSV header order
    excluded = set(_LABEL_SOURCES) | set(spec["dropped_features"])
    features = [name for name in raw["data"] if name not in excluded]

    # 2. categorical vocabularies from adult.data only
    vocabularies = {name: _vocabulary(raw["data"][name]) for name in CATEGORICAL if name in features}

    # 3. numeric transforms; statistics from the train split only
    def numeric(name: str, source: str) -> np.ndarray:
        values = raw[source][name].astype(np.float64)
        return np.log1p(values) if name in _LOG1P else values

    statistics = {
        name: _standardisation(numeric(name, "data")[train_rows])
        for name in NUMERIC
        if name in features or (name == "hours-per-week" and "hours" in spec["tasks"])
    }

    # 4. labels
    relationship_classes = _vocabulary(raw["data"]["relationship"])

    def labels(source: str) -> dict[str, np.ndarray]:
        columns = raw[source]
        out: dict[str, np.ndarray] = {}
        for task in spec["tasks"]:
            if task == "income":
                out[task] = _income(columns["class"])
            elif task == "marital":
                out[task] = (columns["marital-status"] == "Never-married").astype(np.int64)
            elif task == "hours":
                mean, std = statistics["hours-per-week"]
                out[task] = ((columns["hours-per-week"].astype(np.float64) - mean) / std).astype(np.float32)
            elif task == "relationship":
                index = {value: i for i, value in enumerate(relationship_classes)}
                out[task] = np.array([index[v] for v in columns["relationship"].tolist()], dtype=np.int64)
        return out

    # 5. the three tables
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    row_counts: dict[str, int] = {}
    for split in SPLITS:
        source = "test" if split == "test" else "data"
        columns: dict[str, np.ndarray] = {}
        for name in features:
            if name in vocabularies:
                columns[name] = _encode(raw[source][name], vocabularies[name])
            else:
                mean, std = statistics[name]
                columns[name] = ((numeric(name, source) - mean) / std).astype(np.float32)
        columns.update(labels(source))
        for name in vocabularies:
            columns[name + RAW_SUFFIX] = raw[source][name].astype(str)
        if rows[split] is not None:
            columns = {name: values[rows[split]] for name, values in columns.items()}
        table = pa.table(columns)
        row_counts[split] = table.num_rows
        write_atomic(out_dir / f"{split}.parquet", lambda tmp, table=table: pq.write_table(table, tmp))

    # 6. the schema
    tasks: dict[str, dict[str, Any]] = {}
    for task, kind in spec["tasks"].items():
        tasks[task] = {"kind": kind, "label": task}
        if task == "relationship":
            tasks[task]["classes"] = relationship_classes
    schema = {
        "config": config,
        "features": features,
        "categorical": {
            name: {"vocab_size": len(vocabulary) + 1, "values": vocabulary} for name, vocabulary in vocabularies.items()
        },
        "numeric": {
            name: {"mean": statistics[name][0], "std": statistics[name][1], "log1p": name in _LOG1P}
            for name in features
            if name in statistics
        },
        "raw": {name: name + RAW_SUFFIX for name in vocabularies},
        "tasks": tasks,
        "rows": row_counts,
        "source": "UCI Adult (Becker & Kohavi, 1996), CC BY 4.0",
    }
    if "hours" in spec["tasks"]:
        mean, std = statistics["hours-per-week"]
        schema["tasks"]["hours"]["standardisation"] = {"column": "hours-per-week", "mean": mean, "std": std}
    text = json.dumps(schema, indent=2) + "\n"
    write_atomic(out_dir / "schema.json", lambda tmp: Path(tmp).write_text(text))
    return schema


def load_schema(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read schema.json of a prepared folder."""
    return json.loads((Path(folder) / "schema.json").read_text())


def load_split(folder: str | os.PathLike[str], split: str) -> dict[str, np.ndarray]:
    """Read one prepared split as a dict of numpy arrays, one per column."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    table = pq.read_table(Path(folder) / f"{split}.parquet")
    return {name: table.column(name).to_numpy() for name in table.column_names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare the Adult data for akfc's demo and tests.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--config", default="adult", choices=sorted(CONFIGS), help="task configuration")
    args = parser.parse_args(argv)
    schema = prepare(args.out, args.config)
    counts = ", ".join(f"{split} {n}" for split, n in schema["rows"].items())
    print(f"prepared {args.config} in {args.out}: {counts}; tasks {', '.join(schema['tasks'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
