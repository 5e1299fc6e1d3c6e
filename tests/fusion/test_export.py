"""The AKF parts as exported to ONNX: equal to torch and to the textbook layers, and free of ops onnxruntime runs slowly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from akfc.fusion import AKFLevel, FusionConfig, TaskMixture, _InterTaskLayer
from akfc.pipeline import compile
from akfc.recompile import _adapter_is_live, _LevelGraph, export_module
from akfc.runtime import make_session
from akfc.spec import CompileSpec, SourceSpec

F32 = torch.float32
# Per source, its frontier after the level: a wide tensor beside a one-column side term, a flat one, a (fields, dim) one.
FRONTIERS = [[((12,), F32), ((1,), F32)], [((8,), F32)], [((3, 4), F32)]]
SOURCE_TASKS = [0, 0, 1]


def _level() -> AKFLevel:
    torch.manual_seed(0)
    level = AKFLevel(FusionConfig(width=16, heads=4), FRONTIERS, SOURCE_TASKS, task_count=2).eval()
    with torch.no_grad():
        for parameter in level.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)  # away from the zero start, so every part computes something
    return level


def _frontier_tensors(rows: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(rows)
    return [torch.randn(rows, *shape, generator=generator) for frontier in FRONTIERS for shape, _ in frontier]


@pytest.mark.parametrize("tokens", [1, 2, 3])
def test_inter_task_equals_multihead_attention(tokens):
    torch.manual_seed(1)
    layer = _InterTaskLayer(FusionConfig(width=16, heads=4)).eval()
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
        x = torch.randn(7, tokens, 16)  # (B, T, D)
        mixed, attention = layer(x)
        h = layer.norm_attention(x)
        reference, reference_attention = layer.attention(h, h, h, need_weights=True, average_attn_weights=True)
        reference = x + reference
        reference = reference + layer.ffn(layer.norm_ffn(reference))
    torch.testing.assert_close(mixed, reference, rtol=0, atol=2e-6)
    torch.testing.assert_close(attention, reference_attention, rtol=0, atol=2e-7)


@pytest.fixture(scope="module")
def exported() -> tuple[AKFLevel, onnx.ModelProto]:
    level = _level()
    example = _frontier_tensors(3)
    names = [f"in{i}" for i in range(len(example))]
    return level, export_module(_LevelGraph(level), example, names, [f"out{i}" for i in range(len(example))], opset=18)


@pytest.mark.parametrize("rows", [1, 5])
def test_level_export_matches_torch(exported, rows):
    level, model = exported
    inputs = _frontier_tensors(rows)
    with torch.no_grad():
        expected = _LevelGraph(level)(*inputs)
    got = make_session(model, "cpu").run(None, {f"in{i}": t.numpy() for i, t in enumerate(inputs)})
    for out, reference in zip(got, expected):
        np.testing.assert_allclose(out, reference.numpy(), rtol=0, atol=1e-5)


def test_level_export_is_lean(exported):
    _, model = exported
    ops = {node.op_type for node in model.graph.node}
    # Batched per-head products need Transposes; dynamic shapes need Shape and Gather; unfolded weight slices leave Slice.
    assert ops.isdisjoint({"Transpose", "Shape", "Gather", "Slice", "Expand", "Where"}), sorted(ops)
    # 3 projections, 1 gate (task 0 has two sources), query, key, value, output, 2 feed-forward, 4 adapters
    assert sum(node.op_type == "Gemm" for node in model.graph.node) == 14
    assert not any(initializer.name.startswith("level.inter_task.attention.in_proj") for initializer in model.graph.initializer)


def _mixture(kind: str, outputs: list[str]) -> TaskMixture:
    mixture = TaskMixture(kind, outputs)
    with torch.no_grad():
        mixture.mixture_logits.copy_(torch.linspace(-1.0, 1.0, len(outputs)))
    return mixture


def test_mixture_binary_equals_log_probability():
    mixture = _mixture("binary", ["logit", "probability", "probability"])
    generator = torch.Generator().manual_seed(0)
    outputs = [torch.randn(9, 1, generator=generator) * 3, torch.rand(9, 2, generator=generator), torch.rand(9, 1, generator=generator)]
    expected = mixture.log_probability(outputs).exp()[:, 1:]
    torch.testing.assert_close(mixture(outputs), expected, rtol=0, atol=1e-6)


def test_mixture_multiclass_equals_log_probability():
    mixture = _mixture("multiclass", ["logit", "logit"])
    generator = torch.Generator().manual_seed(0)
    outputs = [torch.randn(9, 4, generator=generator) * 3 for _ in range(2)]
    torch.testing.assert_close(mixture(outputs), mixture.log_probability(outputs).exp(), rtol=0, atol=1e-6)


def test_mixture_regression_weights_values():
    mixture = _mixture("regression", ["value", "value"])
    outputs = [torch.full((3, 1), 2.0), torch.full((3, 1), 4.0)]
    weights = mixture.weights().detach()
    torch.testing.assert_close(mixture(outputs).detach(), torch.full((3, 1), float(2 * weights[0] + 4 * weights[1])))


def test_adapter_live_once_any_weight_moves():
    adapter = nn.Linear(4, 3)
    nn.init.zeros_(adapter.weight)
    nn.init.zeros_(adapter.bias)
    assert not _adapter_is_live(adapter)
    with torch.no_grad():
        adapter.bias[2] = 1e-30
    assert _adapter_is_live(adapter)


def test_untrained_fusion_adds_no_level(tiny_zoo, adult_dir, tmp_path: Path):
    """With every adapter still zero the levels add nothing, so the fused graph is the sources and the mixture alone."""
    sources = [SourceSpec("income", tiny_zoo["mlp_deep", "legacy"]), SourceSpec("income", tiny_zoo["dcn", "dynamo"])]
    spec = CompileSpec(
        sources=sources, tasks={}, train=adult_dir / "train.parquet", valid=adult_dir / "valid.parquet",
        output=tmp_path / "fused.onnx", epochs=0,
    ).validate()  # fmt: skip
    result = compile(spec)
    namespaces = {node.name.split("/")[1] for node in onnx.load(result.output).graph.node if node.name.startswith("akf/")}
    assert "mixture" in namespaces
    assert not any(name.startswith("level") for name in namespaces)
    assert all(diff <= 1e-5 for diff in result.parity.values()), result.parity
