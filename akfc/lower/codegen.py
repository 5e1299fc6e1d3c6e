"""Generate a `torch.fx.GraphModule` from an ONNX graph.

`lower` walks the ONNX nodes once, in graph order, and emits for each one a
few FX nodes that call torch ops directly (the per-op functions live in
`akfc.lower.ops`). Nothing ONNX-specific runs per call: the generated
`forward` is plain torch code, which `print(module.code)` shows.

Values known while generating (attributes, Constant nodes, integer
initializers, and whatever is computed from them alone) are folded on the
spot by running the same torch calls eagerly, so a Reshape whose shape is a
constant becomes `x.reshape(4, -1)`. Floating-point initializers are never
folded: each one becomes a buffer (a parameter with `trainable=True`) that
maps back to its initializer by name, see `LoweringInfo.initializers`.
"""

from __future__ import annotations

import builtins
import keyword
import logging
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
import onnx
import torch
import torch.fx as fx
from onnx import numpy_helper

from akfc.errors import ModelError
from akfc.lower import runtime
from akfc.lower.dtypes import onnx_type_name, tensor_from_numpy, to_onnx_type, to_torch_dtype
from akfc.lower.inference import TypeTable
from akfc.lower.registry import ONNX_DOMAINS, lookup, supported_opsets
from akfc.lower.values import Constant, Dims, Item, Operand, Value

__all__ = ["LoweringInfo", "NodeContext", "lower", "lowering_info"]

logger = logging.getLogger(__name__)

_INFO_KEY = "akfc_lowering"
_SUPPORTED_LIST_HINT = "`akfc ops` lists the supported ops, versions and attribute values"
# Names a forward() argument must not take: generated code refers to these.
_RESERVED_NAMES = frozenset({"self", "torch", "operator", "builtins", "math", "inf", "nan", "device", "fx_pytree", "pytree"})


@dataclass(frozen=True)
class LoweringInfo:
    """The correspondence between a lowered module (arguments, outputs, attributes) and its ONNX graph."""

    # The source model named in error messages: the `source` argument or the graph name.
    source: str
    # The model's default-domain opset.
    opset: int
    # ONNX graph inputs in forward()'s positional order (initializers excluded).
    input_names: tuple[str, ...]
    # forward()'s parameter names, one per input: the ONNX names made valid identifiers.
    argument_names: tuple[str, ...]
    # ONNX graph outputs, in the order of the tuple forward() returns.
    output_names: tuple[str, ...]
    # ONNX initializer name -> attribute of the module (buffer, or parameter when
    # trainable) holding its value. Initializers used only as shapes or axes are
    # folded into the code and do not appear.
    initializers: dict[str, str] = field(default_factory=dict)
    trainable: bool = False


def lowering_info(module: torch.nn.Module) -> LoweringInfo:
    """Return the `LoweringInfo` of a module built by `lower` (or a copy or unpickled one)."""
    meta = getattr(module, "meta", None)
    if isinstance(meta, dict) and _INFO_KEY in meta:
        return meta[_INFO_KEY]
    info = getattr(module, _INFO_KEY, None)
    if not isinstance(info, LoweringInfo):
        raise ValueError(f"{type(module).__name__} was not built by akfc.lower.lower")
    return info


def lower(model: onnx.ModelProto, *, trainable: bool = False, source: str | None = None) -> fx.GraphModule:
    """Lower an ONNX model (typically one component) to a torch.fx.GraphModule.

    The module's forward() takes the graph inputs in graph-input order, or by
    keyword. The keywords are `LoweringInfo.argument_names`: the ONNX names
    with characters that are not valid in Python identifiers replaced. It
    always returns a tuple with one tensor per graph output, in graph-output
    order. Inputs may live on any device, and the module follows `.to(device)`.

    Arguments:
        model: the ONNX model; its default-domain opset decides each op's version.
        trainable: turn floating-point initializers into `nn.Parameter`s instead
            of frozen buffers.
        source: the name error messages give the model (default: the graph name).

    Returns:
        The generated module; `lowering_info(module)` maps it back to the graph.

    Raises:
        ModelError: an op, op version, attribute value or element type that the
            lowering does not support, or a graph that is not valid ONNX.
    """
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"lower() expects an onnx.ModelProto, got {type(model).__name__}")
    source_name = source or model.graph.name or "<unnamed model>"
    builder = _Builder(model, source_name, trainable)

    # 1. Placeholders for the graph inputs, values for the initializers.
    builder.add_inputs()

    # 2. The nodes, in graph order (ONNX requires it to be topological).
    for node in model.graph.node:
        builder.add_node(node)

    # 3. The outputs, as one tuple.
    builder.add_outputs()

    # Folding leaves size() calls and constants behind that nothing reads any more.
    builder.graph.eliminate_dead_code()
    module = fx.GraphModule(builder.root, builder.graph, class_name="LoweredComponent")
    # GraphModule keeps `meta` through deepcopy and plain attributes through pickling, so both hold it.
    info = builder.info()
    module.meta[_INFO_KEY] = info
    setattr(module, _INFO_KEY, info)
    logger.debug(
        "lowered %s: %d ONNX nodes -> %d FX nodes, %d initializers as %s",
        source_name,
        len(model.graph.node),
        len(builder.graph.nodes),
        len(builder.initializer_attrs),
        "parameters" if trainable else "buffers",
    )
    return module


class _Builder:
    """The state of one lowering: the FX graph, its root module and the value environment."""

    def __init__(self, model: onnx.ModelProto, source: str, trainable: bool) -> None:
        self.model = model
        self.source = source
        self.trainable = trainable
        self.opset = _default_opset(model, source)
        self.types = TypeTable(model, source)
        self.graph = fx.Graph()
        self.root = torch.nn.Module()
        self.env: dict[str, Value] = {}
        self.initializer_attrs: dict[str, str] = {}
        self.input_names: list[str] = []
        self.argument_names: list[str] = []
        self._attr_names: set[str] = set()
        self._attr_nodes: dict[str, fx.Node] = {}
        # id(tensor) -> (tensor, attribute); the tensor is kept so that its id stays unique.
        self._constant_attrs: dict[int, tuple[torch.Tensor, str]] = {}
        # id(tensor) -> (tensor, ONNX name) for tensors handed to op functions.
        self._tensor_names: dict[int, tuple[torch.Tensor, str]] = {}
        # id(tensor) -> ONNX name, for every initializer (the env keeps the tensors alive).
        self._initializer_ids: dict[int, str] = {}
        self._current: onnx.NodeProto | None = None

    def info(self) -> LoweringInfo:
        used = {node.target for node in self.graph.nodes if node.op == "get_attr"}
        return LoweringInfo(
            source=self.source,
            opset=self.opset,
            input_names=tuple(self.input_names),
            argument_names=tuple(self.argument_names),
            output_names=tuple(output.name for output in self.model.graph.output),
            initializers={name: attribute for name, attribute in self.initializer_attrs.items() if attribute in used},
            trainable=self.trainable,
        )

    # -- graph inputs, nodes and outputs -------------------------------------------------

    def add_inputs(self) -> None:
        graph = self.model.graph
        if graph.sparse_initializer:
            names = ", ".join(sparse.values.name for sparse in graph.sparse_initializer)
            raise ModelError(
                f"{self.source}: sparse initializers ({names}) cannot be lowered to torch; "
                "store them as dense initializers"
            )
        for initializer in graph.initializer:
            tensor = self._tensor_from_array(numpy_helper.to_array(initializer), initializer.name)
            self.env[initializer.name] = Constant(tensor, initializer.name)
            self._initializer_ids[id(tensor)] = initializer.name
        for graph_input in graph.input:
            # An input that also has an initializer is a constant with a default
            # (IR version < 4 listed every initializer as an input); it stays constant.
            if graph_input.name in self.env:
                continue
            if not graph_input.type.HasField("tensor_type"):
                raise ModelError(
                    f"{self.source}: graph input {graph_input.name!r} is not a tensor "
                    f"({graph_input.type.WhichOneof('value')}); only tensor inputs can be lowered to torch"
                )
            elem_type = graph_input.type.tensor_type.elem_type
            if to_torch_dtype(elem_type) is None:
                raise ModelError(
                    f"{self.source}: graph input {graph_input.name!r} has element type "
                    f"{onnx_type_name(elem_type)}, which torch cannot represent"
                )
            placeholder = self.graph.placeholder(_argument_name(graph_input.name))
            # FX writes the target as forward()'s parameter name; the node name is the
            # same identifier made unique among the graph's names.
            placeholder.target = placeholder.name
            placeholder.meta["onnx_name"] = graph_input.name
            self.env[graph_input.name] = placeholder
            self.input_names.append(graph_input.name)
            self.argument_names.append(placeholder.name)

    def add_node(self, node: onnx.NodeProto) -> None:
        version = self._resolve(node)
        for name in node.input:
            if name and name not in self.env:
                raise ModelError(
                    f"{self.source}: node {node.name or '<unnamed>'!r} ({node.op_type}) reads tensor {name!r}, which no "
                    "graph input, initializer or earlier node produces; the graph must be topologically "
                    "sorted (onnx.checker.check_model reports this)"
                )
        spec = lookup(node.op_type)
        assert spec is not None  # _resolve checked it
        context = NodeContext(self, node, version)
        self._current = node
        try:
            results = list(spec.lower(context))
        except ModelError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as error:
            raise ModelError(f"{context.describe()}: lowering failed: {error}") from error
        finally:
            self._current = None
        for index, name in enumerate(node.output):
            if not name:
                continue
            result = results[index] if index < len(results) else None
            if result is None:
                context.fail(f"output {index} ({name!r}) is not supported")
            value = self._normalize(result)
            self.env[name] = value
            self._record_shape(name, value, context.output_ranks.get(index))

    def _record_shape(self, name: str, value: Value, rank: int | None) -> None:
        """Pass what lowering found out about an output's shape to the type table."""
        if isinstance(value, Constant):
            self.types.record(name, to_onnx_type(value.tensor.dtype), list(value.tensor.shape))
        elif isinstance(value, Dims):
            self.types.record(name, to_onnx_type(value.dtype), [] if value.scalar else [len(value.items)])
        elif rank is not None:
            self.types.record(name, None, [None] * rank)

    def add_outputs(self) -> None:
        outputs: list[fx.Node] = []
        for graph_output in self.model.graph.output:
            if graph_output.name not in self.env:
                raise ModelError(
                    f"{self.source}: graph output {graph_output.name!r} is not produced by any node, "
                    "graph input or initializer"
                )
            value = self.env[graph_output.name]
            operand = self.runtime_tensor(value, graph_output.name)
            if operand.op == "get_attr":
                # A constant output: hand out a copy so that callers cannot edit the buffer.
                operand = self.graph.call_method("clone", (operand,))
            outputs.append(operand)
        self.graph.output(tuple(outputs))

    def _resolve(self, node: onnx.NodeProto) -> int:
        """Return the op's schema version, or raise if it has no lowering."""
        label = node.name or "<unnamed>"
        if node.domain not in ONNX_DOMAINS:
            raise ModelError(
                f"{self.source}: node {label!r} is {node.op_type} from domain {node.domain!r}, which akfc "
                f"cannot lower to torch (only the default ONNX domain is supported; such ops can run in "
                f"onnxruntime inside a stem); {_SUPPORTED_LIST_HINT}"
            )
        try:
            version = onnx.defs.get_schema(node.op_type, self.opset, "").since_version
        except onnx.defs.SchemaError:
            raise ModelError(
                f"{self.source}: node {label!r} is {node.op_type}, which has no schema at opset "
                f"{self.opset} of the default ONNX domain; {_SUPPORTED_LIST_HINT}"
            ) from None
        spec = lookup(node.op_type)
        if spec is None:
            raise ModelError(
                f"{self.source}: node {label!r} is {node.op_type} version {version} (opset {self.opset}), "
                f"which akfc cannot lower to torch; {_SUPPORTED_LIST_HINT}"
            )
        if version not in spec.versions:
            opsets = ", ".join(f"{start}-{end}" if end > start else str(start) for start, end in supported_opsets(spec))
            raise ModelError(
                f"{self.source}: node {label!r} is {node.op_type} version {version} (opset {self.opset}), "
                f"which akfc cannot lower to torch: supported versions are "
                f"{', '.join(map(str, spec.versions))} (model opsets {opsets}); convert the model with "
                f"onnx.version_converter.convert_version; {_SUPPORTED_LIST_HINT}"
            )
        return version

    # -- FX emission ---------------------------------------------------------------------

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call `function` now when every argument is known, else emit an FX call."""
        if not _contains_node((args, kwargs)):
            return function(*args, **kwargs)
        node = self.graph.call_function(function, self._fx_args(args), self._fx_args(kwargs))
        self._annotate(node)
        return node

    def call_method(self, name: str, target: Any, *args: Any, **kwargs: Any) -> Any:
        """Call method `name` of `target` now when everything is known, else emit an FX call."""
        if not _contains_node((target, args, kwargs)):
            return getattr(target, name)(*args, **kwargs)
        node = self.graph.call_method(name, self._fx_args((target, *args)), self._fx_args(kwargs))
        self._annotate(node)
        return node

    def runtime_tensor(self, value: Value, name: str) -> fx.Node:
        """Return an FX node that yields `value` as a tensor at run time."""
        if isinstance(value, fx.Node):
            return value
        if isinstance(value, Dims):
            return self.dims_tensor(value)
        if value.initializer is not None:
            return self.initializer_node(value.tensor, value.initializer)
        return self.constant_node(value.tensor, name)

    def initializer_node(self, tensor: torch.Tensor, initializer: str) -> fx.Node:
        """Return the get_attr node of an initializer, registering its buffer or parameter."""
        attribute = self.initializer_attrs.get(initializer)
        if attribute is None:
            attribute = self._new_attribute(initializer)
            if self.trainable and (tensor.is_floating_point() or tensor.is_complex()):
                self.root.register_parameter(attribute, torch.nn.Parameter(tensor.clone()))
            else:
                self.root.register_buffer(attribute, tensor)
            self.initializer_attrs[initializer] = attribute
            self._constant_attrs[id(tensor)] = (tensor, attribute)
        return self._get_attr(attribute)

    def constant_node(self, tensor: torch.Tensor, name: str | None = None) -> fx.Node:
        """Return the get_attr node of a folded constant, registering a buffer on first use."""
        initializer = self._initializer_ids.get(id(tensor))
        if initializer is not None:
            return self.initializer_node(tensor, initializer)
        known = self._constant_attrs.get(id(tensor))
        if known is None:
            hint = name or self._tensor_names.get(id(tensor), (None, "constant"))[1]
            attribute = self._new_attribute(f"c_{hint}")
            self.root.register_buffer(attribute, tensor)
            self._constant_attrs[id(tensor)] = (tensor, attribute)
            known = (tensor, attribute)
        return self._get_attr(known[1])

    def dims_tensor(self, dims: Dims) -> fx.Node:
        node = self.call(runtime.dims_tensor, list(dims.items), dims.anchor, dims.dtype, dims.scalar)
        assert isinstance(node, fx.Node)
        return node

    def remember_name(self, tensor: torch.Tensor, name: str) -> None:
        self._tensor_names.setdefault(id(tensor), (tensor, name))

    def _fx_args(self, value: Any) -> Any:
        """Replace the tensors known now inside call arguments by get_attr nodes."""
        if isinstance(value, torch.Tensor):
            return self.constant_node(value)
        if isinstance(value, tuple):
            return tuple(self._fx_args(item) for item in value)
        if isinstance(value, list):
            return [self._fx_args(item) for item in value]
        if isinstance(value, dict):
            return {key: self._fx_args(item) for key, item in value.items()}
        if isinstance(value, slice):
            return slice(self._fx_args(value.start), self._fx_args(value.stop), self._fx_args(value.step))
        return value

    def _get_attr(self, attribute: str) -> fx.Node:
        node = self._attr_nodes.get(attribute)
        if node is None:
            node = self.graph.get_attr(attribute)
            self._attr_nodes[attribute] = node
        return node

    def _new_attribute(self, hint: str) -> str:
        # Prefixed so that no initializer name can shadow an nn.Module attribute.
        base = "w_" + re.sub(r"\W", "_", hint).strip("_")
        attribute, suffix = base, 1
        while attribute in self._attr_names:
            suffix += 1
            attribute = f"{base}_{suffix}"
        self._attr_names.add(attribute)
        return attribute

    def _annotate(self, node: fx.Node) -> None:
        if self._current is not None:
            node.meta["onnx_node"] = self._current.name
            node.meta["onnx_op_type"] = self._current.op_type

    def _normalize(self, result: Any) -> Value:
        if isinstance(result, (fx.Node, Constant)):
            return result
        if isinstance(result, Dims):
            if result.is_static():
                tensor = torch.tensor([int(item) for item in result.items], dtype=result.dtype)
                return Constant(tensor.reshape(()) if result.scalar else tensor)
            return result
        if isinstance(result, torch.Tensor):
            return Constant(result)
        raise TypeError(f"an op lowering returned {type(result).__name__}, not a tensor value")

    def _tensor_from_array(self, array: np.ndarray, name: str) -> torch.Tensor:
        try:
            return tensor_from_numpy(array)
        except TypeError as error:
            raise ModelError(f"{self.source}: initializer {name!r}: {error}") from error


class NodeContext:
    """The interface an op's lowering function gets to one ONNX node and to code emission.

    Inputs come back as *operands*: an `fx.Node` for a run-time tensor, or a
    `torch.Tensor` known now. `call` runs the torch function immediately when
    no operand is an FX node (constant folding), else it emits an FX node.
    """

    def __init__(self, builder: _Builder, node: onnx.NodeProto, version: int) -> None:
        self._builder = builder
        self.node = node
        self.version = version
        self._attributes = {attribute.name: attribute for attribute in node.attribute}
        self.output_ranks: dict[int, int] = {}

    # -- description and errors ------------------------------------------------------------

    def describe(self) -> str:
        label = self.node.name or "<unnamed>"
        return (
            f"{self._builder.source}: node {label!r} "
            f"({self.node.op_type} version {self.version}, opset {self._builder.opset})"
        )

    def fail(self, message: str) -> NoReturn:
        """Raise a ModelError about this node; `message` states what is not supported and why."""
        raise ModelError(f"{self.describe()}: {message}; {_SUPPORTED_LIST_HINT}")

    # -- attributes --------------------------------------------------------------------------

    def attr(self, name: str, default: Any = None) -> Any:
        """Return an attribute's value (strings decoded), or `default` when it is absent."""
        attribute = self._attributes.get(name)
        if attribute is None:
            return default
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if isinstance(value, list):
            return [item.decode("utf-8") if isinstance(item, bytes) else item for item in value]
        return value

    def has_attr(self, name: str) -> bool:
        return name in self._attributes

    # -- inputs --------------------------------------------------------------------------------

    @property
    def num_inputs(self) -> int:
        return len(self.node.input)

    def has_input(self, index: int) -> bool:
        return index < len(self.node.input) and bool(self.node.input[index])

    def value(self, index: int) -> Value | None:
        if not self.has_input(index):
            return None
        return self._builder.env[self.node.input[index]]

    def tensor(self, index: int) -> Operand | None:
        """Return input `index` as an operand, or None when the optional input is absent."""
        value = self.value(index)
        if value is None:
            return None
        name = self.node.input[index]
        if isinstance(value, fx.Node):
            return value
        if isinstance(value, Dims):
            return self._builder.dims_tensor(value)
        tensor = value.tensor
        if value.initializer is not None and (tensor.is_floating_point() or tensor.is_complex()):
            return self._builder.initializer_node(tensor, value.initializer)
        # Integer initializers (indices, shapes, offsets) fold like constants; one that
        # still reaches run time keeps its own name (see _Builder.constant_node).
        self._builder.remember_name(tensor, name)
        return tensor

    def tensors(self, start: int = 0) -> list[Operand]:
        """Return the variadic inputs from `start` on (absent ones skipped)."""
        operands = [self.tensor(index) for index in range(start, self.num_inputs)]
        return [operand for operand in operands if operand is not None]

    def constant(self, index: int) -> torch.Tensor | None:
        """Return the input's value when it is known now (initializers included), else None."""
        value = self.value(index)
        if isinstance(value, Constant):
            return value.tensor
        return None

    def int_list(self, index: int) -> list[Item] | fx.Node | None:
        """Return a 1-D int input as items known now, or as an FX node yielding a list at run time."""
        value = self.value(index)
        if value is None:
            return None
        if isinstance(value, Constant):
            return [int(item) for item in value.tensor.reshape(-1).tolist()]
        if isinstance(value, Dims):
            return list(value.items)
        return self.method("tolist", value)

    def int_scalar(self, index: int) -> Item | None:
        """Return a one-element int input as an item known now or an FX node yielding an int."""
        value = self.value(index)
        if value is None:
            return None
        if isinstance(value, Constant):
            if value.tensor.numel() != 1:
                self.fail(f"input {index} must hold one value, not shape {list(value.tensor.shape)}")
            return int(value.tensor.reshape(-1)[0].item())
        if isinstance(value, Dims):
            if len(value.items) != 1:
                self.fail(f"input {index} must hold one value, not {len(value.items)}")
            return value.items[0]
        return self.method("item", value)

    def scalar(self, index: int) -> int | float | bool | fx.Node | None:
        """Return a one-element input as a Python number known now, or a run-time tensor."""
        value = self.value(index)
        if value is None:
            return None
        if isinstance(value, Constant):
            return value.tensor.reshape(-1)[0].item()
        if isinstance(value, Dims) and len(value.items) == 1 and isinstance(value.items[0], int):
            return value.items[0]
        operand = self.tensor(index)
        assert isinstance(operand, fx.Node)
        return operand

    def is_frozen(self, index: int) -> bool:
        """Return whether the input is known now and not a trainable parameter."""
        value = self.value(index)
        if not isinstance(value, Constant):
            return False
        tensor = value.tensor
        trainable = self._builder.trainable and value.initializer is not None
        return not (trainable and (tensor.is_floating_point() or tensor.is_complex()))

    def dtype(self, index: int) -> torch.dtype | None:
        """Return the input's torch dtype, or None when shape inference left it unknown."""
        value = self.value(index)
        if value is None:
            return None
        if isinstance(value, Constant):
            return value.tensor.dtype
        if isinstance(value, Dims):
            return value.dtype
        elem_type = self._builder.types.elem_type(self.node.input[index])
        return None if elem_type is None else to_torch_dtype(elem_type)

    def rank(self, index: int) -> int | None:
        """Return the input's rank, or None when shape inference left it unknown."""
        value = self.value(index)
        if value is None:
            return None
        if isinstance(value, Constant):
            return value.tensor.dim()
        if isinstance(value, Dims):
            return 0 if value.scalar else 1
        return self._builder.types.rank(self.node.input[index])

    # -- outputs -------------------------------------------------------------------------------

    @property
    def num_outputs(self) -> int:
        return len(self.node.output)

    def output_used(self, index: int) -> bool:
        return index < len(self.node.output) and bool(self.node.output[index])

    def note_rank(self, index: int, rank: int) -> None:
        """Record output `index`'s rank when the lowering has it and shape inference may not."""
        self.output_ranks[index] = rank

    # -- emission --------------------------------------------------------------------------------

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._builder.call(function, *args, **kwargs)

    def method(self, name: str, target: Any, *args: Any, **kwargs: Any) -> Any:
        return self._builder.call_method(name, target, *args, **kwargs)

    def getitem(self, target: Any, index: Any) -> Any:
        return self._builder.call(operator.getitem, target, index)

    def size(self, operand: Operand, dim: int) -> Item:
        """Return `operand.size(dim)`: an int now, or an FX node yielding one."""
        return self.method("size", operand, dim)

    def dims(self, items: Sequence[Item], *, anchor: fx.Node | None, scalar: bool = False,
             dtype: torch.dtype = torch.int64) -> Dims | torch.Tensor:
        """Build a shape vector from items; a tensor when every item is known now."""
        if all(isinstance(item, int) for item in items):
            tensor = torch.tensor([int(item) for item in items], dtype=dtype)
            return tensor.reshape(()) if scalar else tensor
        if anchor is None:
            raise AssertionError("items computed at run time need an anchor tensor for their device")
        return Dims(tuple(items), scalar, dtype, anchor)


def _contains_node(value: Any) -> bool:
    if isinstance(value, fx.Node):
        return True
    if isinstance(value, (tuple, list)):
        return any(_contains_node(item) for item in value)
    if isinstance(value, dict):
        return any(_contains_node(item) for item in value.values())
    if isinstance(value, slice):
        return _contains_node((value.start, value.stop, value.step))
    return False


def _argument_name(onnx_name: str) -> str:
    name = re.sub(r"\W", "_", onnx_name)
    if not name or name[0].isdigit():
        name = f"input_{name}"
    if keyword.iskeyword(name) or name in _RESERVED_NAMES or hasattr(builtins, name):
        name = f"input_{name}"
    return name


def _default_opset(model: onnx.ModelProto, source: str) -> int:
    for opset in model.opset_import:
        if opset.domain in ONNX_DOMAINS:
            return opset.version
    raise ModelError(f"{source}: the model imports no opset of the default ONNX domain")
