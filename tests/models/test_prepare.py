"""The Adult data preparation: counts, label rates, encodings and determinism."""

from __future__ import annotations

import numpy as np
import pyarrow.csv as pa_csv
import pytest

from models.adult.prepare import CATEGORICAL, DATA_DIR, RAW_SUFFIX, SPLITS, load_schema, load_split, prepare


@pytest.fixture(scope="module")
def adult(tmp_path_factory):
    out = tmp_path_factory.mktemp("adult")
    prepare(out, "adult")
    return out


@pytest.fixture(scope="module")
def adult4(tmp_path_factory):
    out = tmp_path_factory.mktemp("adult4")
    prepare(out, "adult4")
    return out


def _csv_rows(name: str) -> int:
    return pa_csv.read_csv(DATA_DIR / name).num_rows


def test_raw_row_counts():
    assert _csv_rows("adult.data.csv.gz") == 32_561
    assert _csv_rows("adult.test.csv.gz") == 16_281


def test_split_row_counts(adult):
    counts = {split: len(load_split(adult, split)["age"]) for split in SPLITS}
    assert counts == {"train": 26_048, "valid": 6_513, "test": 16_281}
    assert load_schema(adult)["rows"] == counts


def test_positive_rates(adult):
    train, test = load_split(adult, "train"), load_split(adult, "test")
    assert train["income"].mean() == pytest.approx(0.2400, abs=0.001)
    assert test["income"].mean() == pytest.approx(0.2362, abs=0.001)
    assert train["marital"].mean() == pytest.approx(0.3297, abs=0.001)
    assert test["marital"].mean() == pytest.approx(0.3338, abs=0.001)


def test_columns_and_dtypes(adult):
    schema = load_schema(adult)
    train = load_split(adult, "train")
    assert schema["features"] == [
        "age", "workclass", "fnlwgt", "education", "education-num", "occupation", "relationship",
        "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
    ]
    raw = [name + RAW_SUFFIX for name in schema["features"] if name in CATEGORICAL]
    assert list(train) == schema["features"] + ["income", "marital"] + raw
    assert schema["raw"] == {name: name + RAW_SUFFIX for name in schema["features"] if name in CATEGORICAL}
    for name in schema["features"]:
        expected = np.int64 if name in CATEGORICAL else np.float32
        assert train[name].dtype == expected, name
    assert train["income"].dtype == np.int64
    assert set(np.unique(train["income"])) == {0, 1}
    for column in raw:
        assert train[column].dtype == object and isinstance(train[column][0], str), column


def test_raw_columns_match_ids(adult):
    schema = load_schema(adult)
    for split in SPLITS:
        table = load_split(adult, split)
        for name, column in schema["raw"].items():
            vocabulary = ["?", *schema["categorical"][name]["values"]]
            known = np.isin(table[column], vocabulary)
            decoded = np.array(vocabulary, dtype=object)[table[name]]
            # Text never seen in adult.data (only in adult.test) has id 0 like "?".
            assert (decoded[known] == table[column][known]).all(), (split, name)
            assert (table[name][~known] == 0).all(), (split, name)


def test_raw_unknown_stays_question_mark(adult):
    raw = pa_csv.read_csv(DATA_DIR / "adult.test.csv.gz")
    occupation = np.array([v.strip() for v in raw.column("occupation").to_pylist()])
    test = load_split(adult, "test")
    assert (test["occupation_raw"] == occupation).all()
    assert (test["occupation_raw"] == "?").sum() == 966
    assert test["workclass_raw"][0] == "Private"


def test_no_nan_and_ids_inside_vocab(adult):
    schema = load_schema(adult)
    for split in SPLITS:
        table = load_split(adult, split)
        for name, values in table.items():
            if values.dtype.kind == "f":
                assert np.isfinite(values).all(), (split, name)
        for name, info in schema["categorical"].items():
            assert table[name].min() >= 0, (split, name)
            assert table[name].max() < info["vocab_size"], (split, name)


def test_unknown_category_is_zero(adult):
    raw = pa_csv.read_csv(DATA_DIR / "adult.test.csv.gz")
    occupation = np.array(raw.column("occupation").to_pylist())
    unknown = occupation == "?"
    assert unknown.sum() == 966
    ids = load_split(adult, "test")["occupation"]
    assert (ids[unknown] == 0).all()
    assert (ids[~unknown] > 0).all()


def test_vocabulary_sorted_without_unknown(adult):
    schema = load_schema(adult)
    workclass = schema["categorical"]["workclass"]
    assert "?" not in workclass["values"]
    assert workclass["values"] == sorted(workclass["values"])
    assert workclass["vocab_size"] == len(workclass["values"]) + 1 == 9


def test_numeric_standardised_on_train(adult):
    train = load_split(adult, "train")
    for name in ("age", "capital-gain", "hours-per-week"):
        assert train[name].mean() == pytest.approx(0.0, abs=1e-5), name
        assert train[name].std() == pytest.approx(1.0, abs=1e-4), name
    assert load_schema(adult)["numeric"]["capital-gain"]["log1p"] is True


def test_prepare_is_deterministic(adult, tmp_path):
    prepare(tmp_path, "adult")
    for name in [f"{split}.parquet" for split in SPLITS] + ["schema.json"]:
        assert (tmp_path / name).read_bytes() == (adult / name).read_bytes(), name


def test_adult4_tasks_and_features(adult4):
    schema = load_schema(adult4)
    assert {task: info["kind"] for task, info in schema["tasks"].items()} == {
        "income": "binary", "marital": "binary", "hours": "regression", "relationship": "multiclass",
    }
    assert "hours-per-week" not in schema["features"]
    assert "relationship" not in schema["features"]
    assert "relationship_raw" not in load_split(adult4, "train")
    assert len(schema["tasks"]["relationship"]["classes"]) == 6
    train = load_split(adult4, "train")
    assert train["hours"].dtype == np.float32
    assert train["hours"].mean() == pytest.approx(0.0, abs=1e-5)
    assert sorted(np.unique(train["relationship"])) == list(range(6))
    assert "hours-per-week" not in train
