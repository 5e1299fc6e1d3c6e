"""A synthetic recommender-shaped data set: 13 numeric and 26 categorical features, four related tasks.

Run:
    python -m benchmarks.synthetic --rows 200000 --seed 0 --out out/bench/synthetic/rows200000

Writes train.parquet, valid.parquet, test.parquet (80 / 10 / 10 % of the rows,
in row order) and schema.json in the layout of ``models.adult.prepare``, so the
zoo (``models.zoo``) and ``akfc compile`` read it as they read Adult.

Features: ``num_00`` .. ``num_12`` are float32 standard normals; ``cat_00`` ..
``cat_25`` are int64 ids 1..n-1 with vocabulary sizes n from 10 to 10,000 on a
geometric scale, drawn from a Zipf-like law (p(rank) proportional to
1 / rank^1.05), and 1 % of them the unknown id 0.

Labels come from a hidden model drawn from the seed. Every field gets an
8-wide embedding (a numeric field is its value times a vector). The 39 x 8
field matrix feeds one ReLU layer of width 32 (h) and a factorisation-machine
pairwise term (s). Each task reads h along its own direction, which shares 70 %
of its variance with a common direction, so the tasks are related but not
equal:

    click, like, purchase   binary, P(1) = sigmoid(1.5 z_h + 0.7 z_s + bias),
                            base rates 35 %, 25 % and 15 %
    dwell                   regression, 1.5 z_h + 0.7 z_s + N(0, 0.5^2), standardised

where z_h and z_s are the task's readings of h and s standardised with
constants measured once on a calibration sample. Rows are generated in
chunks of 100,000, each from its own stream of the seed. So a data set of N
rows is the first N rows of any larger one of the same seed, and the same
arguments always write the same values.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from akfc.atomic import write_atomic, write_text_atomic

__all__ = ["CATEGORICAL", "GENERATOR_VERSION", "NUMERIC", "TASKS", "VOCAB_SIZES", "cached_dataset", "dataset_key", "generate", "schema", "write_dataset"]

NUMERIC = tuple(f"num_{i:02d}" for i in range(13))
CATEGORICAL = tuple(f"cat_{i:02d}" for i in range(26))
VOCAB_SIZES = dict(zip(CATEGORICAL, np.geomspace(10, 10_000, len(CATEGORICAL)).round().astype(int).tolist()))
TASKS = {"click": "binary", "like": "binary", "purchase": "binary", "dwell": "regression"}
_BASE_RATES = {"click": 0.35, "like": 0.25, "purchase": 0.15}
_EMBEDDING_DIM = 8
_HIDDEN = 32
_SHARED_VARIANCE = 0.7  # of each task's direction in h, shared with the common direction
_WEIGHT_H, _WEIGHT_S = 1.5, 0.7
_DWELL_NOISE = 0.5
_ZIPF_EXPONENT = 1.05
_UNKNOWN_FRACTION = 0.01
_CHUNK = 100_000
_CALIBRATION_ROWS = 20_000
_SPLITS = (("train", 0.8), ("valid", 0.1), ("test", 0.1))
GENERATOR_VERSION = 1  # raise when the generated values change, so cached data sets are rebuilt


@dataclass(frozen=True)
class _HiddenModel:
    embeddings: dict[str, np.ndarray]  # categorical field -> (vocab, D)
    numeric_vectors: np.ndarray  # (13, D)
    layer: np.ndarray  # (39 * D, H)
    directions: dict[str, np.ndarray]  # task -> (H,)
    id_probabilities: dict[str, np.ndarray]  # categorical field -> p over ids 1..vocab-1


def _hidden_model(seed: int) -> _HiddenModel:
    rng = np.random.default_rng([seed, 0])
    scale = 1 / np.sqrt(_EMBEDDING_DIM)
    embeddings = {name: rng.standard_normal((size, _EMBEDDING_DIM)).astype(np.float32) * scale for name, size in VOCAB_SIZES.items()}
    numeric_vectors = rng.standard_normal((len(NUMERIC), _EMBEDDING_DIM)).astype(np.float32) * scale
    fields = len(NUMERIC) + len(CATEGORICAL)
    layer = rng.standard_normal((fields * _EMBEDDING_DIM, _HIDDEN)).astype(np.float32) / np.sqrt(fields * _EMBEDDING_DIM)
    common = rng.standard_normal(_HIDDEN)
    directions = {
        task: (np.sqrt(_SHARED_VARIANCE) * common + np.sqrt(1 - _SHARED_VARIANCE) * rng.standard_normal(_HIDDEN)).astype(np.float32)
        for task in TASKS
    }
    id_probabilities = {}
    for name, size in VOCAB_SIZES.items():
        weights = 1.0 / np.arange(1, size) ** _ZIPF_EXPONENT
        id_probabilities[name] = rng.permutation(weights / weights.sum())
    return _HiddenModel(embeddings, numeric_vectors, layer, directions, id_probabilities)


def _features(model: _HiddenModel, rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {name: rng.standard_normal(rows).astype(np.float32) for name in NUMERIC}
    for name, size in VOCAB_SIZES.items():
        ids = rng.choice(size - 1, size=rows, p=model.id_probabilities[name]).astype(np.int64) + 1
        ids[rng.random(rows) < _UNKNOWN_FRACTION] = 0
        columns[name] = ids
    return columns


def _readings(model: _HiddenModel, columns: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return per task the raw readings (h along its direction, and the pairwise term), one value per row."""
    numeric = np.stack([columns[name] for name in NUMERIC], axis=1)[:, :, None] * model.numeric_vectors  # N, 13, D
    categorical = np.stack([model.embeddings[name][columns[name]] for name in CATEGORICAL], axis=1)  # N, 26, D
    fields = np.concatenate([numeric, categorical], axis=1)  # N, 39, D
    hidden = np.maximum(fields.reshape(len(fields), -1) @ model.layer, 0.0)  # N, H
    pairwise = 0.5 * ((fields.sum(axis=1) ** 2).sum(axis=1) - (fields**2).sum(axis=(1, 2)))  # N
    return {task: (hidden @ direction, pairwise) for task, direction in model.directions.items()}


def _calibration(model: _HiddenModel, seed: int) -> dict[str, Any]:
    """Measure the standardisation constants and the binary tasks' biases on a fixed sample."""
    rng = np.random.default_rng([seed, 2])
    readings = _readings(model, _features(model, rng, _CALIBRATION_ROWS))
    constants: dict[str, Any] = {}
    for task, (along_h, pairwise) in readings.items():
        entry = {"h": (float(along_h.mean()), float(along_h.std())), "s": (float(pairwise.mean()), float(pairwise.std()))}
        z = _WEIGHT_H * (along_h - entry["h"][0]) / entry["h"][1] + _WEIGHT_S * (pairwise - entry["s"][0]) / entry["s"][1]
        if TASKS[task] == "binary":
            low, high = -20.0, 20.0  # bisection for the bias that gives the base rate
            for _ in range(60):
                middle = (low + high) / 2
                if np.mean(1 / (1 + np.exp(-(z + middle)))) < _BASE_RATES[task]:
                    low = middle
                else:
                    high = middle
            entry["bias"] = (low + high) / 2
        else:
            noisy = z + _DWELL_NOISE * rng.standard_normal(len(z))
            entry["value"] = (float(noisy.mean()), float(noisy.std()))
        constants[task] = entry
    return constants


def generate(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Generate `rows` rows: feature columns and one label column per task."""
    model = _hidden_model(seed)
    constants = _calibration(model, seed)
    parts: list[dict[str, np.ndarray]] = []
    for chunk, start in enumerate(range(0, rows, _CHUNK)):
        count = min(_CHUNK, rows - start)
        rng = np.random.default_rng([seed, 1, chunk])
        # Every chunk draws a full chunk, so that its first rows do not depend on how many of them are kept.
        columns = _features(model, rng, _CHUNK)
        readings = _readings(model, columns)
        noise = rng.random((len(TASKS), _CHUNK))
        gaussian = rng.standard_normal(_CHUNK)
        for t, (task, (along_h, pairwise)) in enumerate(readings.items()):
            entry = constants[task]
            z = _WEIGHT_H * (along_h - entry["h"][0]) / entry["h"][1] + _WEIGHT_S * (pairwise - entry["s"][0]) / entry["s"][1]
            if TASKS[task] == "binary":
                columns[task] = (noise[t] < 1 / (1 + np.exp(-(z + entry["bias"])))).astype(np.int64)
            else:
                columns[task] = ((z + _DWELL_NOISE * gaussian - entry["value"][0]) / entry["value"][1]).astype(np.float32)
        parts.append({name: values[:count] for name, values in columns.items()})
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def schema(rows: dict[str, int], seed: int) -> dict[str, Any]:
    """Return the schema.json content in the layout of ``models.adult.prepare``."""
    return {
        "config": "synthetic",
        "features": [*NUMERIC, *CATEGORICAL],
        "categorical": {name: {"vocab_size": size} for name, size in VOCAB_SIZES.items()},
        "numeric": {name: {"mean": 0.0, "std": 1.0, "log1p": False} for name in NUMERIC},
        "tasks": {task: {"kind": kind, "label": task} for task, kind in TASKS.items()},
        "rows": rows,
        "source": f"benchmarks.synthetic, seed {seed}, generator version {GENERATOR_VERSION}",
    }


def write_dataset(out_dir: str | os.PathLike[str], rows: int, seed: int = 0) -> dict[str, Any]:
    """Generate and write the three splits and schema.json; return the schema."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = generate(rows, seed)
    counts, start = {}, 0
    for split, fraction in _SPLITS:
        end = rows if split == _SPLITS[-1][0] else start + int(rows * fraction)
        table = pa.table({name: values[start:end] for name, values in columns.items()})
        write_atomic(out_dir / f"{split}.parquet", lambda tmp, table=table: pq.write_table(table, tmp))
        counts[split], start = end - start, end
    content = schema(counts, seed)
    # schema.json goes last: its presence marks a complete data set for cached_dataset.
    write_text_atomic(out_dir / "schema.json", json.dumps(content, indent=2) + "\n")
    return content


def dataset_key(rows: int, seed: int) -> str:
    """Return a short key of everything the written values depend on: this file, the row count and the seed."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(f"{rows}/{seed}".encode())
    return digest.hexdigest()[:12]


def cached_dataset(root: str | os.PathLike[str], rows: int, seed: int = 0) -> Path:
    """Return the folder of a data set under `root`, writing it first unless an identical one is there."""
    folder = Path(root) / f"rows{rows}-seed{seed}-{dataset_key(rows, seed)}"
    if not (folder / "schema.json").is_file():
        write_dataset(folder, rows, seed)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a synthetic recommender-shaped data set (13 numeric, 26 categorical features, 4 tasks).")
    parser.add_argument("--rows", type=int, required=True, help="total rows; 80 / 10 / 10 % go to train, valid and test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the hidden model and the rows")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    content = write_dataset(args.out, args.rows, args.seed)
    print(f"wrote {args.out}: " + ", ".join(f"{split} {n:,}" for split, n in content["rows"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
