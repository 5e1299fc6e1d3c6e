"""The Adaptive Knowledge Fusion (AKF) model over frozen source components.

Shapes use these letters: B batch, M sources, T tasks, D fusion width,
W a source's flattened frontier width per row.

At every level k the model runs each source's level-k block on its input
frontier, then

1. projects the block's output frontier (flattened and concatenated per row)
   to the common width D: ``z_m = LayerNorm(Linear(e_m))``;
2. mixes the projections of each task's sources with a softmax gate computed
   from them (intra-task mixture of experts): ``u_t = sum_m g_tm z_m``;
3. lets the task tokens ``u_t + task_embedding_t`` attend to each other in a
   pre-norm multi-head Transformer encoder layer: ``v_t``;
4. feeds ``v_t`` back into every float tensor ``f`` of the source's output
   frontier: ``f + A_m(v_t)``, reshaped to ``f``'s shape.

The adapters ``A_m`` start at zero, so before training the fused model
computes exactly what its sources compute. A task with several sources outputs
a learned mixture of their probabilities (values for regression). The mixture
weights start uniform, so the fused model starts as the sources' ensemble.

A *head-only* source (a tree ensemble: no frontier inside it) takes part in
its task's mixture only. No level reads it: its output is computed once, before
fusion, and its blocks and head are identities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = [
    "TASK_KINDS",
    "AKFLevel",
    "FusedModel",
    "FusionConfig",
    "IdentityBlock",
    "SourceComponents",
    "TaskMixture",
    "frontier_width",
]

TASK_KINDS = ("binary", "multiclass", "regression")

Frontier = tuple[Tensor, ...]


@dataclass
class FusionConfig:
    """Hyper-parameters of the AKF layers (the source components bring their own)."""

    width: int = 64  # D: common width of the task tokens
    heads: int = 4  # attention heads of the inter-task layer; must divide width
    ffn_multiplier: int = 2  # hidden width of the inter-task feed-forward, in multiples of D
    dropout: float = 0.0  # on attention weights and the feed-forward; 0 keeps runs bit-reproducible across devices


@dataclass
class SourceComponents:
    """One source's trainable view: its blocks and head as torch modules.

    Every block and the head take a frontier (a tuple of tensors, batch first)
    and return one. ``frontiers[k]`` lists the per-row shapes and dtypes of
    the level-k frontier: ``frontiers[0]`` is what the stem produces,
    ``frontiers[k]`` what block k produces (k = 1..L). A level the source is
    too shallow for has an identity block.
    """

    name: str
    task: str
    blocks: list[nn.Module]
    head: nn.Module
    frontiers: list[list[tuple[tuple[int, ...], torch.dtype]]]
    output: str = "logit"  # what the head returns: "logit", "probability" (no logit exposed) or "value"
    classes: int = 1  # width of the head output: 1 for binary and regression
    stem: nn.Module | None = None  # a lowered stem to train; None when stem outputs are cached instead
    head_only: bool = False  # no interior frontier: the cached stem output is the head output, and no level reads it


def frontier_width(shapes: Sequence[tuple[tuple[int, ...], torch.dtype]]) -> int:
    """Return W, the per-row element count of a frontier's float tensors."""
    return sum(math.prod(shape) for shape, dtype in shapes if dtype.is_floating_point)


class IdentityBlock(nn.Module):
    """The block of a level a source is too shallow for: returns its frontier unchanged."""

    def forward(self, *frontier: Tensor) -> Frontier:
        return tuple(frontier)


class _InterTaskLayer(nn.Module):
    """Pre-norm Transformer encoder layer over the T task tokens that returns its attention too.

    The parameters are those of ``nn.MultiheadAttention``, so checkpoints keep
    their keys, but the attention is computed here. T is a handful of tokens,
    so a score is an elementwise product of query and key, summed per head by
    a constant 0/1 matrix. Exported to ONNX, that is a few broadcast Mul and
    MatMul nodes. The batched form, B x nh products of tiny matrices, costs
    onnxruntime a chain of Transposes and slow per-head MatMuls.
    """

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        d = config.width
        self.dropout = config.dropout
        self.norm_attention = nn.LayerNorm(d)
        self.attention = nn.MultiheadAttention(d, config.heads, dropout=config.dropout, batch_first=True)
        self.norm_ffn = nn.LayerNorm(d)
        self.ffn = nn.Sequential(
            nn.Linear(d, config.ffn_multiplier * d),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.ffn_multiplier * d, d),
        )
        head_size = d // config.heads
        # membership[i, h] = 1 when feature i belongs to head h.
        membership = (torch.arange(d).unsqueeze(1) // head_size == torch.arange(config.heads)).float()  # (D, nh)
        self.register_buffer("head_scores", membership / math.sqrt(head_size), persistent=False)
        self.register_buffer("head_features", membership.T.contiguous(), persistent=False)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Return the mixed tokens (B, T, D) and the attention averaged over heads (B, T_query, T_key)."""
        t, d = tokens.shape[1:]
        x = tokens.reshape(-1, d)  # (B*T, D): the linear layers run as plain 2-D products
        h = self.norm_attention(x)
        # Three products rather than one split three ways: onnxruntime copies every output of a Split.
        weight, bias = self.attention.in_proj_weight, self.attention.in_proj_bias
        q, k, v = (nn.functional.linear(h, weight[i * d : (i + 1) * d], bias[i * d : (i + 1) * d]) for i in range(3))  # (B*T, D) each
        scores = (q.view(-1, t, 1, d) * k.view(-1, 1, t, d)) @ self.head_scores  # (B, T, T, nh): query, key, head
        weights = torch.softmax(scores, dim=2)
        dropped = nn.functional.dropout(weights, self.dropout, self.training)
        mixed = ((dropped @ self.head_features) * v.view(-1, 1, t, d)).sum(dim=2)  # (B, T, D)
        x = x + self.attention.out_proj(mixed.view(-1, d))
        x = x + self.ffn(self.norm_ffn(x))
        return x.view(-1, t, d), weights.mean(dim=-1)


class AKFLevel(nn.Module):
    """The fusion at one level: projection, intra-task gates, inter-task attention, zero-initialised feedback."""

    def __init__(
        self,
        config: FusionConfig,
        frontiers: Sequence[Sequence[tuple[tuple[int, ...], torch.dtype]]],
        source_tasks: Sequence[int],
        task_count: int,
    ) -> None:
        """Build the level for M sources.

        Arguments:
            config: the fusion hyper-parameters.
            frontiers: per source, the shapes and dtypes of its frontier after this level's block.
            source_tasks: per source, the index of its task in 0..T-1.
            task_count: T.
        """
        super().__init__()
        if config.width % config.heads:
            raise ValueError(f"fusion width {config.width} is not divisible by heads {config.heads}")
        self.source_tasks = list(source_tasks)
        self.shapes = [[shape for shape, _ in frontier] for frontier in frontiers]
        self.is_float = [[dtype.is_floating_point for _, dtype in frontier] for frontier in frontiers]
        self.task_sources = [[m for m, t in enumerate(self.source_tasks) if t == task] for task in range(task_count)]
        d = config.width

        self.projections = nn.ModuleList(
            nn.Sequential(nn.Linear(frontier_width(frontier), d), nn.LayerNorm(d)) for frontier in frontiers
        )
        # One gate per task with several sources (a lone source has weight 1);
        # a zero gate starts uniform over the task's sources.
        self.gates = nn.ModuleDict()
        for task, sources in enumerate(self.task_sources):
            if len(sources) > 1:
                gate = nn.Linear(len(sources) * d, len(sources))
                nn.init.zeros_(gate.weight)
                nn.init.zeros_(gate.bias)
                self.gates[str(task)] = gate
        self.task_embeddings = nn.Parameter(torch.randn(task_count, d) * 0.02)
        self.inter_task = _InterTaskLayer(config)
        self.adapters = nn.ModuleList()
        for m, frontier in enumerate(frontiers):
            per_tensor = nn.ModuleList()
            for shape, dtype in frontier:
                adapter = nn.Linear(d, math.prod(shape)) if dtype.is_floating_point else nn.Identity()
                if dtype.is_floating_point:
                    # Zero feedback at start: the fused model begins equal to its sources.
                    nn.init.zeros_(adapter.weight)
                    nn.init.zeros_(adapter.bias)
                per_tensor.append(adapter)
            self.adapters.append(per_tensor)

    def forward(self, frontiers: list[Frontier]) -> tuple[list[Frontier], list[Tensor], Tensor]:
        """Fuse the block outputs of every source.

        Returns the frontiers with feedback added, the gate weights per task
        (each (B, M_t)) and the inter-task attention (B, T, T).
        """
        # 1. projection of each source's flattened float frontier: z_m (B, D)
        z = []
        for m, frontier in enumerate(frontiers):
            flat = [t.flatten(1) for t, is_float in zip(frontier, self.is_float[m]) if is_float]
            z.append(self.projections[m](torch.cat(flat, dim=1)))

        # 2. intra-task gates: u_t (B, D)
        d = self.task_embeddings.shape[1]
        tokens, gate_weights = [], []
        for task, sources in enumerate(self.task_sources):
            if not sources:
                # Every source of this task is head-only: its token carries only the task embedding.
                tokens.append(torch.zeros_like(z[0]))
                gate_weights.append(z[0][:, :0])
                continue
            if str(task) not in self.gates:
                tokens.append(z[sources[0]])
                gate_weights.append(torch.ones_like(z[sources[0]][:, :1]))
                continue
            weights = torch.softmax(self.gates[str(task)](torch.cat([z[m] for m in sources], dim=1)), dim=-1)  # (B, M_t)
            # A sum of products, not a reduction over a (B, M_t, D) stack: onnxruntime reduces a middle axis slowly.
            weighted = [w * z[m] for w, m in zip(weights.split(1, dim=1), sources)]
            tokens.append(sum(weighted[1:], weighted[0]))
            gate_weights.append(weights)

        # 3. inter-task attention over the task tokens: v (B, T, D)
        t = len(self.task_sources)
        v, attention = self.inter_task((torch.cat(tokens, dim=1) + self.task_embeddings.flatten()).view(-1, t, d))

        # 4. feedback into every float tensor of each source's frontier
        per_task = v.reshape(-1, t * d).split(d, dim=1)  # T tensors (B, D)
        fed_back = []
        for m, frontier in enumerate(frontiers):
            v_m = per_task[self.source_tasks[m]]
            out = []
            for tensor, shape, is_float, adapter in zip(frontier, self.shapes[m], self.is_float[m], self.adapters[m]):
                if not is_float:
                    out.append(tensor)
                    continue
                feedback = adapter(v_m)  # (B, W)
                out.append(tensor + (feedback.view(-1, *shape) if len(shape) != 1 else feedback).to(tensor.dtype))
            fed_back.append(tuple(out))
        return fed_back, gate_weights, attention


class TaskMixture(nn.Module):
    """A task's output: the learned mixture of its sources' outputs, uniform at start.

    For classification the mixture is over probabilities; ``log_probability``
    computes its logarithm stably from the sources' logits for the loss.
    """

    def __init__(self, kind: str, source_outputs: Sequence[str]) -> None:
        super().__init__()
        if kind not in TASK_KINDS:
            raise ValueError(f"unknown task kind {kind!r}; expected one of {TASK_KINDS}")
        self.kind = kind
        self.source_outputs = list(source_outputs)
        self.mixture_logits = nn.Parameter(torch.zeros(len(source_outputs)))

    def weights(self) -> Tensor:
        return torch.softmax(self.mixture_logits, dim=0)

    def _log_probabilities(self, head_outputs: Sequence[Tensor]) -> Tensor:
        """Per source log-probabilities, stacked: (M_t, B, C), C = 2 for binary (classes 0 and 1)."""
        logs = []
        for output, kind in zip(head_outputs, self.source_outputs):
            if kind == "logit" and self.kind == "binary":
                logs.append(torch.cat([nn.functional.logsigmoid(-output), nn.functional.logsigmoid(output)], dim=-1))
            elif kind == "logit":
                logs.append(torch.log_softmax(output, dim=-1))
            else:
                # A source that exposes only probabilities (tree ensembles): clamp so that log stays finite.
                if self.kind == "binary" and output.shape[-1] == 2:
                    output = output[..., 1:]  # classifiers with [P(0), P(1)] columns
                p = output.clamp(1e-12, 1.0)
                logs.append(torch.cat([torch.log1p(-p.clamp(max=1 - 1e-7)), p.log()], dim=-1) if self.kind == "binary" else p.log())
        return torch.stack(logs)

    def log_probability(self, head_outputs: Sequence[Tensor]) -> Tensor:
        """Log of the mixture's class probabilities: (B, 2) for binary, (B, C) for multiclass."""
        log_weights = torch.log_softmax(self.mixture_logits, dim=0).view(-1, 1, 1)
        return torch.logsumexp(log_weights + self._log_probabilities(head_outputs), dim=0)

    def forward(self, head_outputs: Sequence[Tensor]) -> Tensor:
        """Compute the task output: P(class 1) (B, 1) for binary, probabilities (B, C) for multiclass, values (B, 1) for regression.

        This is the weighted sum of the sources' outputs itself, not the
        exponential of ``log_probability``. Both are equal up to rounding, and
        the sum exports to a few nodes instead of a log, logsumexp and exp per source.
        """
        columns = [self._contribution(output, kind) for output, kind in zip(head_outputs, self.source_outputs)]
        weights = self.weights()
        if columns[0].shape[-1] == 1:
            return torch.cat(columns, dim=-1) @ weights.unsqueeze(1)  # (B, M_t) @ (M_t, 1)
        return torch.stack(columns, dim=-1) @ weights  # (B, C, M_t) @ (M_t,)

    def _contribution(self, output: Tensor, kind: str) -> Tensor:
        """Return what one source adds to the mixture: P(class 1) (B, 1) for binary, probabilities (B, C) for multiclass, values for regression."""
        if self.kind == "regression":
            return output
        if kind == "logit":
            return torch.sigmoid(output) if self.kind == "binary" else torch.softmax(output, dim=-1)
        return output[..., 1:] if self.kind == "binary" and output.shape[-1] == 2 else output


@dataclass
class FusedOutput:
    """Result of one forward pass of the fused model."""

    outputs: dict[str, Tensor]  # per task: probabilities or values, as the sources output them
    head_outputs: dict[str, list[Tensor]]  # per task: each source's raw head output (logit, probability or value)
    gates: list[list[Tensor]] = field(default_factory=list)  # per level, per task: (B, M_t)
    attention: list[Tensor] = field(default_factory=list)  # per level: (B, T, T)


class FusedModel(nn.Module):
    """Source blocks and heads (frozen unless unfrozen) with AKF levels between them."""

    def __init__(self, sources: Sequence[SourceComponents], task_kinds: dict[str, str], config: FusionConfig) -> None:
        super().__init__()
        levels = {len(source.blocks) for source in sources}
        if len(levels) != 1:
            raise ValueError(f"every source needs the same number of levels, got {sorted(levels)}")
        (self.level_count,) = levels
        self.config = config
        self.source_names = [source.name for source in sources]
        self.task_names = list(task_kinds)
        source_tasks = [self.task_names.index(source.task) for source in sources]
        # The sources the levels see, in order; level k's i-th frontier belongs to source fused_sources[i].
        self.fused_sources = [m for m, source in enumerate(sources) if not source.head_only]
        if not self.fused_sources:
            raise ValueError("every source is head-only, so there is nothing to fuse; add a source with an interior frontier")
        # A source without a lowered stem receives its stem frontier from the cache.
        self.stems = nn.ModuleList(source.stem if source.stem is not None else IdentityBlock() for source in sources)
        self.blocks = nn.ModuleList(nn.ModuleList(source.blocks) for source in sources)
        self.heads = nn.ModuleList(source.head for source in sources)
        self.levels = nn.ModuleList(
            AKFLevel(
                config,
                [sources[m].frontiers[k + 1] for m in self.fused_sources],
                [source_tasks[m] for m in self.fused_sources],
                len(self.task_names),
            )
            for k in range(self.level_count)
        )
        self.task_sources = {
            task: [m for m, source in enumerate(sources) if source.task == task] for task in self.task_names
        }
        self.mixtures = nn.ModuleDict(
            {
                task: TaskMixture(kind, [sources[m].output for m in self.task_sources[task]])
                for task, kind in task_kinds.items()
            }
        )

    def forward(self, stem_frontiers: list[Frontier]) -> FusedOutput:
        """Run the fusion from each source's stem frontier (its raw inputs for a source with a lowered stem)."""
        frontiers = [tuple(self.stems[m](*frontier)) for m, frontier in enumerate(stem_frontiers)]
        gates, attention = [], []
        for k in range(self.level_count):
            frontiers, level_gates, level_attention = self.run_level(k, frontiers)
            gates.append(level_gates)
            attention.append(level_attention)
        head_outputs = [self.heads[m](*frontier) for m, frontier in enumerate(frontiers)]
        head_outputs = [out[0] if isinstance(out, (tuple, list)) else out for out in head_outputs]
        per_task = {task: [head_outputs[m] for m in sources] for task, sources in self.task_sources.items()}
        outputs = {task: self.mixtures[task](per_task[task]) for task in self.task_names}
        return FusedOutput(outputs=outputs, head_outputs=per_task, gates=gates, attention=attention)

    def run_level(self, k: int, frontiers: list[Frontier]) -> tuple[list[Frontier], list[Tensor], Tensor]:
        """Run every source's level-k block, then the level's fusion over the sources it fuses."""
        frontiers = [tuple(self.blocks[m][k](*frontier)) for m, frontier in enumerate(frontiers)]
        fed_back, gates, attention = self.levels[k]([frontiers[m] for m in self.fused_sources])
        for m, frontier in zip(self.fused_sources, fed_back):
            frontiers[m] = frontier
        return frontiers, gates, attention

    def task_parameter_names(self, task: str) -> list[str]:
        """Name the parameters that belong to one task: its sources' adapters and heads, and its mixture.

        Put back at their starting values they return the task's output to its
        sources' ensemble; the projections, gates and inter-task layers are shared.
        """
        sources = {str(m) for m in self.task_sources[task]}
        # Adapters are indexed by position among the sources the levels see.
        fused = {str(i) for i, m in enumerate(self.fused_sources) if m in self.task_sources[task]}
        names = []
        for name, _ in self.named_parameters():
            parts = name.split(".")
            adapter = parts[0] == "levels" and parts[2] == "adapters" and parts[3] in fused
            head = parts[0] == "heads" and parts[1] in sources
            if adapter or head or parts[:2] == ["mixtures", task]:
                names.append(name)
        return names

    def akf_parameters(self) -> list[nn.Parameter]:
        """Return the parameters the fusion adds (levels and mixtures), as opposed to the sources' own."""
        return [p for module in (self.levels, self.mixtures) for p in module.parameters()]
