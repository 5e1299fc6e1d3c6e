"""The compile spec: TOML parsing, flag merging and the errors a user sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from akfc.errors import SpecError
from akfc.spec import load_spec, merge_flags, parse_source_argument

SPEC = """
[data]
train = "data/train.parquet"
valid = "data/valid.parquet"

[fusion]
levels = 2
width = 32
heads = 4

[training]
epochs = 5
lr = 0.002

[task.income]
kind = "binary"

[[source]]
task = "income"
path = "models/income_dcn.onnx"

[[source]]
task = "income"
path = "models/income_sklearn.onnx"
output = "output_probability"
inputs = { float_input = ["age", "fnlwgt"], native_country = "native-country" }

[[source]]
task = "marital"
path = "other/income_dcn.onnx"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def test_spec_file_parsed(tmp_path):
    spec = load_spec(_write(tmp_path, SPEC)).validate()
    assert spec.train == tmp_path / "data/train.parquet"
    assert (spec.levels, spec.width, spec.heads, spec.epochs, spec.lr) == (2, 32, 4, 5, 0.002)
    assert [s.name for s in spec.sources] == ["income_dcn", "income_sklearn", "income_dcn_2"]
    assert spec.sources[1].inputs == {"float_input": ["age", "fnlwgt"], "native_country": "native-country"}
    assert spec.tasks["income"].kind == "binary"
    assert spec.tasks["marital"].label_column == "marital"


def test_flags_override_file(tmp_path):
    spec = merge_flags(load_spec(_write(tmp_path, SPEC)), epochs=9, lr=None)
    assert spec.epochs == 9
    assert spec.lr == 0.002


def test_source_argument():
    source = parse_source_argument("income=models/a.onnx")
    assert (source.task, source.path) == ("income", Path("models/a.onnx"))
    with pytest.raises(SpecError, match=r"source 'models/a.onnx' is not of the form TASK=PATH"):
        parse_source_argument("models/a.onnx")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[source]]\ntask = 'a'\n", r"\[\[source\]\] #1: missing key 'path'"),
        ("[[source]]\ntask = 'a'\npath = 'x.onnx'\ncolour = 1\n", r"unknown key colour"),
        ("[fusion]\nlevels = 2\n[[source]]\ntask = 'a'\npath = 'x.onnx'\n[bogus]\n", r"unknown section bogus"),
        ("[fusion]\ndepth = 2\n", r"unknown option 'depth'"),
        ("[[source]]\ntask = 'a'\npath = 'x.onnx'\ninputs = { x = 3 }\n", r"inputs must map graph input names"),
        ("level = [", r"is not valid TOML"),
    ],
)
def test_spec_errors(tmp_path, text, message):
    with pytest.raises(SpecError, match=message):
        load_spec(_write(tmp_path, text))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"width": 30, "heads": 4}, r"width 30 must be a multiple of heads 4"),
        ({"levels": 0}, r"levels must be an integer >= 1, got 0"),
        ({"device": "tpu"}, r"device 'tpu' is invalid; use one of auto, cpu, cuda"),
        ({"train_components": ["blocks"]}, r"cannot train 'blocks'"),
    ],
)
def test_option_errors(tmp_path, options, message):
    spec = merge_flags(load_spec(_write(tmp_path, SPEC)), **options)
    with pytest.raises(SpecError, match=message):
        spec.validate()


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match=r"spec file .*nope.toml not found"):
        load_spec(tmp_path / "nope.toml")
