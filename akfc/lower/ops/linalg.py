"""Matrix products: Gemm, MatMul and Einsum."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from akfc.lower.registry import register

if TYPE_CHECKING:
    from akfc.lower.codegen import NodeContext

__all__: list[str] = []


@register("Gemm", (13,))
def _gemm(ctx: NodeContext) -> list[Any]:
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    trans_a, trans_b = ctx.attr("transA", 0), ctx.attr("transB", 0)
    a, b, c = ctx.tensor(0), ctx.tensor(1), ctx.tensor(2)
    if trans_a:
        a = ctx.method("t", a)

    # A Linear layer as the exporters write it: Gemm(x, W, bias, transB=1).
    bias_rank = ctx.rank(2)
    if trans_b and alpha == 1.0 and (c is None or (beta == 1.0 and bias_rank is not None and bias_rank <= 1)):
        return [ctx.call(F.linear, a, b, c)]

    if trans_b:
        b = ctx.method("t", b)
    if c is None or beta == 0.0:
        product = ctx.call(torch.matmul, a, b)
        return [product if alpha == 1.0 else ctx.call(torch.mul, product, alpha)]
    return [ctx.call(torch.addmm, c, a, b, beta=beta, alpha=alpha)]


@register("MatMul", (13,))
def _matmul(ctx: NodeContext) -> list[Any]:
    return [ctx.call(torch.matmul, ctx.tensor(0), ctx.tensor(1))]


@register("Einsum", (12, 28))
def _einsum(ctx: NodeContext) -> list[Any]:
    equation = ctx.attr("equation").replace(" ", "")
    return [ctx.call(torch.einsum, equation, *ctx.tensors())]
