"""Opset normalisation: one common opset by up-conversion, clear errors otherwise."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnx.parser
import onnx.version_converter
import pytest

from akfc.errors import ModelError
from akfc.passes import MIN_OPSET, convert_opset, default_opset, load_model, target_opset, unify_opsets


def _reduce_mean_model(opset: int) -> onnx.ModelProto:
    # ReduceMean's axes moved from an attribute to an input in opset 18.
    axes = "<axes=[1], keepdims=0>" if opset < 18 else "<keepdims=0>"
    inputs = "x" if opset < 18 else "x, axes"
    initializer = "" if opset < 18 else "<int64[1] axes = {1}>"
    return onnx.parser.parse_model(f"""
<ir_version: 8, opset_import: ["" : {opset}]>
mean (float[N, 3, 4] x) => (float[N, 4] y)
{initializer}
{{
    m = ReduceMean{axes}({inputs})
    y = Relu(m)
}}
""")


def test_target_opset_highest():
    assert target_opset([_reduce_mean_model(17), _reduce_mean_model(20)]) == 20


def test_target_opset_minimum():
    old = _reduce_mean_model(13)
    assert default_opset(old) == 13
    assert target_opset([old]) == MIN_OPSET == 17


def test_convert_up(run, feeds):
    source = _reduce_mean_model(17)
    converted = convert_opset(source, 20)
    assert default_opset(converted) == 20
    assert converted.ir_version >= 9
    assert default_opset(source) == 17
    inputs = feeds(source)
    np.testing.assert_array_equal(run(converted, inputs)["y"], run(source, inputs)["y"])


def test_convert_same_opset_copies(chain):
    converted = convert_opset(chain, 17)
    assert converted is not chain
    assert converted.SerializeToString() == chain.SerializeToString()


def test_convert_down_rejected():
    with pytest.raises(ModelError, match="mean.onnx: opset 20 is above the target opset 17; akfc only converts up"):
        convert_opset(_reduce_mean_model(20), 17, origin="mean.onnx")


def test_convert_names_blocking_op(monkeypatch):
    real = onnx.version_converter.convert_version

    def failing(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
        if version >= 18 and default_opset(model) < 18:
            raise RuntimeError("No Adapter For ReduceMean")
        return real(model, version)

    monkeypatch.setattr(onnx.version_converter, "convert_version", failing)
    with pytest.raises(ModelError) as error:
        convert_opset(_reduce_mean_model(17), 20, origin="mean.onnx")
    message = str(error.value)
    assert "mean.onnx: cannot convert from opset 17 to 20" in message
    assert "fails at opset 18 on ReduceMean (changed in opset 18)" in message
    assert "Relu" not in message
    assert "No Adapter For ReduceMean" in message


def test_convert_real_failure_names_op():
    # Pad-1 took its padding as the attribute `paddings`; onnx has no adapter from it to Pad-2.
    model = onnx.parser.parse_model("""
<ir_version: 3, opset_import: ["" : 1]>
old (float[N, 2] x) => (float[N, 4] y)
{
    y = Pad<paddings=[0, 1, 0, 1]>(x)
}
""")
    model = load_model(model.SerializeToString())
    message = (
        "old.onnx: cannot convert from opset 1 to 18: the version converter fails at opset 2 on Pad (changed in "
        "opset 2) (No Adapter From Version $1 for Pad); re-export the model at opset 18"
    )
    with pytest.raises(ModelError, match=f"^{re.escape(message)}$"):
        convert_opset(model, 18, origin="old.onnx")


def test_convert_symbolic_broadcast_failure():
    # Mul-1 broadcast by attribute; converting it to Mul-7 needs static dims, and N is symbolic.
    model = onnx.parser.parse_model("""
<ir_version: 3, opset_import: ["" : 1]>
old (float[N, 2] x) => (float[N, 2] y)
{
    y = Mul(x, x)
}
""")
    with pytest.raises(ModelError, match=r"^old.onnx: cannot convert from opset 1 to 18: the version converter fails at opset 7 on Mul \(changed in opset 7\) \(N Dimension is a param instead of an int.\)"):
        convert_opset(load_model(model.SerializeToString()), 18, origin="old.onnx")


def test_unify_opsets(chain):
    models = unify_opsets([chain, _reduce_mean_model(20)], ["chain.onnx", "mean.onnx"])
    assert [default_opset(model) for model in models] == [20, 20]
    assert default_opset(chain) == 17


def test_unify_opsets_origin_count(chain):
    with pytest.raises(ValueError, match="got 1 origins for 2 models"):
        unify_opsets([chain, chain], ["chain.onnx"])
