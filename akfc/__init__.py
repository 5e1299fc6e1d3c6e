"""akfc: fuse trained single-task ONNX models into one multi-task ONNX graph.

Glossary (these words mean one thing throughout the package):

source
    One input model: an ONNX file trained for one task.
component
    A piece of a source cut out by decomposition: the *stem* (graph inputs to
    the first frontier), the *blocks* (frontier to frontier along the trunk)
    and the *head* (last frontier to the task output).
frontier
    The set of tensors at a component boundary: every path from the graph
    inputs to the task output crosses it.
level
    The k-th block of every source; level k of each source sits at roughly
    the same fraction of its trunk's FLOPs.
task token
    A task's representation at one level, mixed across that task's sources by
    a gate and across tasks by self-attention.
"""

from __future__ import annotations

__all__ = ["__version__", "compile"]

__version__ = "0.1.0"

try:
    import onnxruntime as _onnxruntime  # noqa: F401 -- imported only to fail early with a clear message
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "akfc needs ONNX Runtime, which is not installed. Install it with "
        "`pip install 'akfc[cpu]'` (CPU) or `pip install 'akfc[gpu]'` (CUDA)."
    ) from error


def __getattr__(name: str):  # noqa: ANN202 -- module-level attribute hook (PEP 562)
    # `akfc.compile` is loaded on first use: it pulls in torch, which `import akfc` alone should not.
    if name == "compile":
        from akfc.pipeline import compile

        return compile
    raise AttributeError(f"module 'akfc' has no attribute {name!r}")
