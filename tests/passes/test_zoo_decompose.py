"""Every zoo architecture and exporter through the passes: levels, exact recomposition, exporter agreement."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest

from akfc.passes import Decomposition, NormalizedSource, decompose, extract_components, load_model, normalize, run_components, unify_opsets

ARCHITECTURES = ("mlp_deep", "mlp_wide", "dcn", "deepfm", "autoint")
EXPORTERS = ("legacy", "dynamo")
# Widths of the stem frontier, the level 1 and 2 frontiers and the head frontier on the Adult features.
EXPECTED_WIDTHS = {
    "mlp_deep": [62, 64, 64, 32],  # embeddings + numerics | 64 | 64 | 32
    "mlp_wide": [62, 256, 128, 128],  # two hidden layers: block 3 is an identity
    "dcn": [62, 190, 126, 94],  # deep hidden + x0 carried for the cross network | concat(cross, deep)
    "deepfm": [63, 129, 65, 33],  # fields [7, 8] + numerics [6, 1] + first-order term | deep hidden + FM and linear terms
    "autoint": [118, 208, 208, 64],  # fields | attention outputs [13, 16] | MLP hidden
}


@cache
def _prepare(path: Path) -> tuple[NormalizedSource, Decomposition, list[onnx.ModelProto]]:
    (model,) = unify_opsets([load_model(path)], [str(path)])
    source = normalize(model, "src", origin=str(path))
    decomposition = decompose(source.model)
    return source, decomposition, extract_components(source.model, decomposition)


def _feeds(source: NormalizedSource, table: dict[str, np.ndarray], rows: slice = slice(None)) -> dict[str, np.ndarray]:
    return {name: np.ascontiguousarray(table[original][rows]) for name, original in source.input_names.items()}


@pytest.fixture(scope="module")
def test_split(adult_dir: Path) -> dict[str, np.ndarray]:
    from models.adult.prepare import load_split

    return load_split(adult_dir, "test")


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_zoo_levels(architecture, exporter, tiny_zoo):
    source, decomposition, _ = _prepare(tiny_zoo[architecture, exporter])
    assert source.kind == "binary"
    assert decomposition.levels == 3
    assert [frontier.width for frontier in decomposition.frontiers] == EXPECTED_WIDTHS[architecture]
    identity = [block.identity for block in decomposition.blocks]
    assert identity == ([False, False, True] if architecture == "mlp_wide" else [False, False, False])


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_zoo_frontiers_at_layer_ends(architecture, exporter, tiny_zoo):
    _, decomposition, _ = _prepare(tiny_zoo[architecture, exporter])
    flow = decomposition.dataflow
    for frontier in decomposition.frontiers[1:]:
        for name in frontier.names:
            producer = flow.nodes[flow.producer[name]]
            assert producer.op_type not in ("Gemm", "MatMul", "BatchNormalization"), f"{name} is cut inside a layer"
    for block in decomposition.blocks:
        if not block.identity:
            assert block.ops.get("Gemm", 0) + block.ops.get("MatMul", 0) >= 1


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_zoo_recompose_exact(architecture, exporter, tiny_zoo, test_split):
    source, decomposition, components = _prepare(tiny_zoo[architecture, exporter])
    feeds = _feeds(source, test_split)
    expected = run_components([source.model], feeds)[source.output]
    chained = run_components(components, feeds)[source.output]
    assert chained.shape == expected.shape == (len(test_split["income"]), 1)
    assert float(np.max(np.abs(chained - expected))) == 0.0
    optimized = run_components(components, feeds, optimize=True)[source.output]
    assert float(np.max(np.abs(optimized - expected))) <= 1e-6


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_zoo_exporters_agree(architecture, tiny_zoo, test_split):
    legacy = _prepare(tiny_zoo[architecture, "legacy"])
    dynamo = _prepare(tiny_zoo[architecture, "dynamo"])
    assert [block.identity for block in legacy[1].blocks] == [block.identity for block in dynamo[1].blocks]

    rows = slice(0, 2000)
    legacy_values = run_components(legacy[2], _feeds(legacy[0], test_split, rows))
    dynamo_values = run_components(dynamo[2], _feeds(dynamo[0], test_split, rows))
    for legacy_component, dynamo_component in zip(legacy[1].components, dynamo[1].components):
        assert len(legacy_component.outputs) == len(dynamo_component.outputs)
        # Names differ between exporters, so match each output to the dynamo output it equals.
        unmatched = [dynamo_values[spec.name] for spec in dynamo_component.outputs]
        for spec in legacy_component.outputs:
            values = legacy_values[spec.name]
            match = next(
                (index for index, other in enumerate(unmatched) if other.shape == values.shape and np.allclose(other, values, rtol=0, atol=1e-5)),
                None,
            )
            assert match is not None, f"{legacy_component.name} output {spec.name} has no equal dynamo output"
            unmatched.pop(match)
