"""torch.compile on lowered zoo sources: one graph, no breaks, same outputs as eager.

A cold compile takes 8-25 s on a 2-core machine, so only two representative
sources are compiled: the legacy AutoInt export (attention, embeddings and the
exporter's Shape -> Gather -> Concat -> Reshape chains) and the dynamo DeepFM
export (FM term, ReduceSum, Gemm layers).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from akfc.lower import lower, lowering_info
from models.adult.prepare import load_split


@pytest.mark.slow
@pytest.mark.parametrize(("architecture", "exporter"), [("autoint", "legacy"), ("deepfm", "dynamo")])
def test_compiled_source_matches_eager(tiny_zoo, adult_dir, architecture, exporter):
    module = lower(onnx.load(tiny_zoo[architecture, exporter]))
    info = lowering_info(module)
    test = load_split(adult_dir, "test")
    torch._dynamo.reset()
    compiled = torch.compile(module, dynamic=True, fullgraph=True)
    # Two batch sizes: the second must reuse the dynamic-shape graph.
    for rows in (256, 100):
        arguments = [torch.from_numpy(np.array(test[name][:rows])) for name in info.input_names]
        with torch.no_grad():
            expected = module(*arguments)
            actual = compiled(*arguments)
        for value, reference in zip(actual, expected, strict=True):
            torch.testing.assert_close(value, reference, rtol=1e-5, atol=1e-5)
