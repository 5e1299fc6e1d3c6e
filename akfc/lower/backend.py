"""The torch lowering as an `onnx.backend.base.Backend`.

This is what runs the ONNX conformance suite (`onnx.backend.test.BackendTest`)
against `lower`: `prepare` lowers a model once and `run` feeds numpy arrays
through the generated module.

    >>> rep = LoweringBackend.prepare(model, "CPU")
    >>> outputs = rep.run([x])          # numpy arrays in graph-output order
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx.backend.base
import torch

from akfc.lower.codegen import lower, lowering_info
from akfc.lower.dtypes import tensor_from_numpy, tensor_to_numpy

__all__ = ["LoweringBackend", "LoweringBackendRep"]


def _torch_device(device: str) -> torch.device:
    parsed = onnx.backend.base.Device(device)
    if parsed.type == onnx.backend.base.DeviceType.CUDA:
        return torch.device("cuda", parsed.device_id)
    return torch.device("cpu")


class LoweringBackendRep(onnx.backend.base.BackendRep):
    """A lowered model, ready to run on numpy inputs."""

    def __init__(self, module: torch.fx.GraphModule, device: torch.device) -> None:
        self.module = module
        self.device = device
        self.info = lowering_info(module)

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        """Run on inputs given as a list in graph-input order, a dict by name, or one array."""
        if isinstance(inputs, Mapping):
            missing = [name for name in self.info.input_names if name not in inputs]
            if missing:
                raise ValueError(f"missing inputs {missing}; the model takes {list(self.info.input_names)}")
            arrays = [inputs[name] for name in self.info.input_names]
        elif isinstance(inputs, Sequence) and not isinstance(inputs, (str, bytes)):
            arrays = list(inputs)
        else:
            arrays = [inputs]
        if len(arrays) != len(self.info.input_names):
            raise ValueError(
                f"{len(arrays)} inputs given; the model takes {len(self.info.input_names)}: "
                f"{list(self.info.input_names)}"
            )
        tensors = [tensor_from_numpy(array, self.device) for array in arrays]
        with torch.no_grad():
            outputs = self.module(*tensors)
        return tuple(tensor_to_numpy(output) for output in outputs)


class LoweringBackend(onnx.backend.base.Backend):
    """Runs ONNX models by lowering them to torch FX modules."""

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> LoweringBackendRep:
        """Check and lower `model`; keyword arguments go to `lower` (trainable, source)."""
        super().prepare(model, device, **kwargs)
        torch_device = _torch_device(device)
        module = lower(model, **kwargs).to(torch_device)
        return LoweringBackendRep(module, torch_device)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple[Any, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(
        cls,
        node: onnx.NodeProto,
        inputs: Any,
        device: str = "CPU",
        outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None,
        **kwargs: Any,
    ) -> tuple[Any, ...]:
        """Run one node on numpy inputs by wrapping it in a single-node model."""
        super().run_node(node, inputs, device=device, outputs_info=outputs_info, **kwargs)
        arrays = [np.asarray(array) for array in inputs]
        graph_inputs = [
            onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype), array.shape
            )
            for name, array in zip(node.input, arrays, strict=False)
            if name
        ]
        graph_outputs = [onnx.helper.make_empty_tensor_value_info(name) for name in node.output if name]
        graph = onnx.helper.make_graph([node], "run_node", graph_inputs, graph_outputs)
        opset = kwargs.pop("opset_version", onnx.defs.onnx_opset_version())
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
        module = lower(model).to(_torch_device(device))
        return LoweringBackendRep(module, _torch_device(device)).run(arrays)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        parsed = onnx.backend.base.Device(device)
        if parsed.type == onnx.backend.base.DeviceType.CUDA:
            return torch.cuda.is_available()
        return parsed.type == onnx.backend.base.DeviceType.CPU
