"""Element types: ONNX `TensorProto` data types, torch dtypes and numpy arrays.

torch has no dtype for ONNX's string, 2-bit, 4-bit and 6-bit types; a graph
that uses them cannot be lowered. numpy spells bfloat16 and the float8 types
through ml_dtypes, which `torch.from_numpy` does not accept, so arrays of
those types cross over as raw bytes of the same width.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto

__all__ = [
    "onnx_type_name",
    "to_torch_dtype",
    "to_onnx_type",
    "tensor_from_numpy",
    "tensor_to_numpy",
]

_TORCH_DTYPES: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.INT8: torch.int8,
    TensorProto.INT16: torch.int16,
    TensorProto.INT32: torch.int32,
    TensorProto.INT64: torch.int64,
    TensorProto.UINT8: torch.uint8,
    TensorProto.UINT16: torch.uint16,
    TensorProto.UINT32: torch.uint32,
    TensorProto.UINT64: torch.uint64,
    TensorProto.BOOL: torch.bool,
    TensorProto.COMPLEX64: torch.complex64,
    TensorProto.COMPLEX128: torch.complex128,
    TensorProto.FLOAT8E4M3FN: torch.float8_e4m3fn,
    TensorProto.FLOAT8E4M3FNUZ: torch.float8_e4m3fnuz,
    TensorProto.FLOAT8E5M2: torch.float8_e5m2,
    TensorProto.FLOAT8E5M2FNUZ: torch.float8_e5m2fnuz,
    TensorProto.FLOAT8E8M0: torch.float8_e8m0fnu,
}
_ONNX_TYPES: dict[torch.dtype, int] = {dtype: onnx_type for onnx_type, dtype in _TORCH_DTYPES.items()}

# Unsigned integers of the same width, to move ml_dtypes arrays in and out of torch.
_BIT_CARRIERS: dict[torch.dtype, tuple[torch.dtype, type[np.generic]]] = {
    torch.bfloat16: (torch.uint16, np.uint16),
    torch.float8_e4m3fn: (torch.uint8, np.uint8),
    torch.float8_e4m3fnuz: (torch.uint8, np.uint8),
    torch.float8_e5m2: (torch.uint8, np.uint8),
    torch.float8_e5m2fnuz: (torch.uint8, np.uint8),
    torch.float8_e8m0fnu: (torch.uint8, np.uint8),
}


def onnx_type_name(onnx_type: int) -> str:
    """Return the `TensorProto.DataType` name of an element type, such as FLOAT."""
    try:
        return TensorProto.DataType.Name(onnx_type)
    except ValueError:
        return f"<unknown element type {onnx_type}>"


def to_torch_dtype(onnx_type: int) -> torch.dtype | None:
    """Return the torch dtype of an ONNX element type, or None when torch has none."""
    return _TORCH_DTYPES.get(onnx_type)


def to_onnx_type(dtype: torch.dtype) -> int:
    """Return the ONNX element type of a torch dtype."""
    try:
        return _ONNX_TYPES[dtype]
    except KeyError:
        raise ValueError(f"torch dtype {dtype} has no ONNX element type") from None


def tensor_from_numpy(array: np.ndarray | np.generic, device: torch.device | str = "cpu") -> torch.Tensor:
    """Copy a numpy array, ml_dtypes element types included, into a torch tensor."""
    array = np.asarray(array)
    onnx_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
    dtype = to_torch_dtype(onnx_type)
    if dtype is None:
        raise TypeError(f"torch has no dtype for numpy arrays of {array.dtype} (ONNX {onnx_type_name(onnx_type)})")
    if dtype in _BIT_CARRIERS:
        carrier, numpy_carrier = _BIT_CARRIERS[dtype]
        tensor = torch.from_numpy(np.array(array.view(numpy_carrier), copy=True)).view(dtype)
    else:
        # The copy keeps torch from sharing (and warning about) read-only numpy memory.
        tensor = torch.from_numpy(np.array(array, copy=True))
    return tensor.to(device)


def tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """Copy a torch tensor into a numpy array of the matching ONNX element type."""
    tensor = tensor.detach().cpu()
    if tensor.dtype in _BIT_CARRIERS:
        carrier, _ = _BIT_CARRIERS[tensor.dtype]
        numpy_dtype = onnx.helper.tensor_dtype_to_np_dtype(to_onnx_type(tensor.dtype))
        return tensor.contiguous().view(carrier).numpy().view(numpy_dtype)
    return tensor.numpy()
