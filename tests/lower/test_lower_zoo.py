"""Lowered zoo components against onnxruntime on the whole Adult test split (16,281 rows).

Every source of the tiny zoo (five architectures, both exporters) is
normalised, decomposed into stem, three blocks and head, and extracted; each
block and head lowered to torch must reproduce onnxruntime's outputs of the
extracted component, and the chain stem (onnxruntime) -> blocks -> head
(torch) must reproduce the source's predictions.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from akfc.lower import lower, lowering_info
from akfc.passes import decompose, extract_components, load_model, normalize, run_components
from models.adult.prepare import load_split
from models.zoo import ARCHITECTURES, EXPORTERS

SOURCES = [(architecture, exporter) for architecture in ARCHITECTURES for exporter in EXPORTERS]
# float32 outputs of the zoo (logits and hidden activations of magnitude up to ~10).
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def test_split(adult_dir):
    return load_split(adult_dir, "test")


def _feeds(model: onnx.ModelProto, table: dict[str, np.ndarray], names: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    names = names or {value.name: value.name for value in model.graph.input}
    return {name: np.ascontiguousarray(table[column]) for name, column in names.items()}


def _tensor(value: np.ndarray | torch.Tensor) -> torch.Tensor:
    # onnxruntime hands out read-only arrays; torch wants memory it may write.
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.array(value))


def _run_lowered(module: torch.nn.Module, values: dict) -> dict[str, torch.Tensor]:
    info = lowering_info(module)
    arguments = [_tensor(values[name]) for name in info.input_names]
    with torch.no_grad():
        outputs = module(*arguments)
    return dict(zip(info.output_names, outputs, strict=True))


@pytest.mark.parametrize(("architecture", "exporter"), SOURCES)
def test_components_match_onnxruntime(tiny_zoo, test_split, architecture, exporter):
    source = normalize(load_model(tiny_zoo[architecture, exporter]), "src")
    decomposition = decompose(source.model)
    components = extract_components(source.model, decomposition)
    values = run_components(components, _feeds(source.model, test_split, dict(source.input_names)))

    for component, model in zip(decomposition.components[1:], components[1:], strict=True):
        module = lower(model, source=f"{architecture}/{exporter}:{component.name}")
        for name, output in _run_lowered(module, values).items():
            np.testing.assert_allclose(
                output.numpy(), values[name], rtol=0, atol=TOLERANCE, err_msg=f"{component.name} output {name}"
            )


@pytest.mark.parametrize(("architecture", "exporter"), SOURCES)
def test_source_reproduced_end_to_end(tiny_zoo, test_split, architecture, exporter):
    path = tiny_zoo[architecture, exporter]
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, _feeds(onnx.load(path), test_split)
    )[0]

    # The stem runs in onnxruntime; blocks and head run in torch on torch's own outputs.
    source = normalize(load_model(path), "src")
    decomposition = decompose(source.model)
    components = extract_components(source.model, decomposition)
    values: dict = run_components(components[:1], _feeds(source.model, test_split, dict(source.input_names)))
    for component, model in zip(decomposition.components[1:], components[1:], strict=True):
        values.update(_run_lowered(lower(model, source=component.name), values))

    np.testing.assert_allclose(values[source.output].numpy(), expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize(("architecture", "exporter"), SOURCES)
def test_whole_source_lowers(tiny_zoo, test_split, architecture, exporter):
    """The unmodified export, stem included, lowered as one module."""
    path = tiny_zoo[architecture, exporter]
    model = onnx.load(path)
    feeds = _feeds(model, test_split)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    outputs = _run_lowered(lower(model, source=path.name), feeds)
    for value, reference in zip(outputs.values(), expected, strict=True):
        np.testing.assert_allclose(value.numpy(), reference, rtol=0, atol=TOLERANCE)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("architecture", "exporter"), [("autoint", "legacy"), ("deepfm", "dynamo")])
def test_whole_source_on_cuda(tiny_zoo, test_split, architecture, exporter):
    path = tiny_zoo[architecture, exporter]
    model = onnx.load(path)
    feeds = _feeds(model, test_split)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    module = lower(model).to("cuda")
    info = lowering_info(module)
    with torch.no_grad():
        outputs = module(*[_tensor(feeds[name]).cuda() for name in info.input_names])
    for value, reference in zip(outputs, expected, strict=True):
        assert value.device.type == "cuda"
        # CUDA kernels reduce in another order than onnxruntime's CPU kernels.
        np.testing.assert_allclose(value.cpu().numpy(), reference, rtol=0, atol=1e-4)
