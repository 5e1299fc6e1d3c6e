"""Brief training and checked ONNX export of hand-written torch sources.

The builders in ``packed`` and ``signatures`` train small torch models on a
prepared Adult folder for a few dozen steps and export them with the torch
exporter, each with its own input convention. Training stays short because the
tests need real weights, not good models.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

__all__ = ["PARITY_TOLERANCE", "BuiltSource", "check_parity", "export_torch", "fit_binary"]

PARITY_TOLERANCE = 1e-5
_CHECK_ROWS = 512


@dataclass(frozen=True)
class BuiltSource:
    """An exported source and the spec bindings it needs: pass ``inputs`` and ``output`` to ``SourceSpec``."""

    path: Path
    inputs: dict[str, str | list[str]] = field(default_factory=dict)  # graph input -> data column(s)
    output: str | None = None  # graph output holding the task's score, when the source has several


def fit_binary(
    model: nn.Module,
    feeds: Callable[[np.ndarray], tuple[torch.Tensor, ...]],
    labels: np.ndarray,
    steps: int = 60,
    batch_size: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
) -> nn.Module:
    """Train a model that returns probabilities for `steps` Adam steps on random batches; return it in eval mode.

    Arguments:
        model: maps the tensors of ``feeds(rows)`` to probabilities of shape [batch] or [batch, 1].
        feeds: builds the model's positional inputs for an array of row indices.
        labels: 0/1 labels, one per row.
    """
    generator = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    target = torch.from_numpy(labels.astype(np.float32))
    model.train()
    for _ in range(steps):
        rows = generator.integers(0, len(labels), batch_size)
        probability = model(*feeds(rows)).reshape(-1)
        loss = nn.functional.binary_cross_entropy(probability, target[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def export_torch(model: nn.Module, example: tuple[torch.Tensor, ...], input_names: list[str], output_names: list[str], path: Path, opset: int = 17) -> onnx.ModelProto:
    """Export with the TorchScript exporter, batch axis dynamic on every input and output; return the loaded model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated in favour of dynamo; both are real user paths.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), example, str(path), dynamo=False, opset_version=opset, input_names=input_names,
            output_names=output_names, dynamic_axes={name: {0: "batch"} for name in [*input_names, *output_names]},
        )  # fmt: skip
    return onnx.load(str(path))


def check_parity(path: Path, feeds: Mapping[str, np.ndarray], output: str, expected: np.ndarray) -> float:
    """Run the file in onnxruntime on the first rows of `feeds`; raise unless it matches `expected` within PARITY_TOLERANCE."""
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([output], {name: values[:_CHECK_ROWS] for name, values in feeds.items()})[0]
    difference = float(np.max(np.abs(got.reshape(-1) - expected[:_CHECK_ROWS].reshape(-1))))
    if difference > PARITY_TOLERANCE:
        raise RuntimeError(f"{path}: onnxruntime differs from torch by {difference:.3g} on output {output!r} (tolerance {PARITY_TOLERANCE})")
    return difference
