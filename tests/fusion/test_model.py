"""The AKF fusion model on small torch components: starting equality and gradient flow."""

from __future__ import annotations

import torch
from torch import nn

from akfc.fusion import FusedModel, FusionConfig, IdentityBlock, SourceComponents
from akfc.train import TrainConfig, TrainingSet, load_checkpoint, train

B = 32


class _Dense(nn.Module):
    """A frozen block mapping a one-tensor frontier to a two-tensor one (a main branch and a side term)."""

    def __init__(self, width_in: int, width_out: int) -> None:
        super().__init__()
        self.main = nn.Linear(width_in, width_out)
        self.side = nn.Linear(width_in, 1)

    def forward(self, *frontier):
        x = frontier[0]
        return torch.relu(self.main(x)), self.side(x)


class _Head(nn.Module):
    def __init__(self, width_in: int, classes: int = 1) -> None:
        super().__init__()
        self.linear = nn.Linear(width_in, classes)

    def forward(self, x, side):
        return self.linear(x) + side


class _Reduce(nn.Module):
    """Turn a two-tensor frontier back into a one-tensor one so blocks can chain."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.main = nn.Linear(width + 1, width)

    def forward(self, x, side):
        return (torch.tanh(self.main(torch.cat([x, side], dim=1))),)


def _source(name: str, task: str, width: int, classes: int = 1, shallow: bool = False) -> SourceComponents:
    f32 = torch.float32
    if shallow:
        blocks = [IdentityBlock(), _Dense(width, width)]
        frontiers = [[((width,), f32)], [((width,), f32)], [((width,), f32), ((1,), f32)]]
    else:
        blocks = [_Dense(width, width), _ReduceThenDense(width)]
        frontiers = [[((width,), f32)], [((width,), f32), ((1,), f32)], [((width,), f32), ((1,), f32)]]
    return SourceComponents(name, task, blocks, _Head(width, classes), frontiers, classes=classes)


class _ReduceThenDense(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.reduce = _Reduce(width)
        self.dense = _Dense(width, width)

    def forward(self, x, side):
        return self.dense(*self.reduce(x, side))


def _model(seed: int = 0) -> tuple[FusedModel, list[SourceComponents]]:
    torch.manual_seed(seed)
    sources = [
        _source("a", "click", 8),
        _source("b", "click", 8, shallow=True),
        _source("c", "buy", 8, classes=3),
    ]
    for source in sources:
        for module in [*source.blocks, source.head]:
            module.requires_grad_(False)
    kinds = {"click": "binary", "buy": "multiclass"}
    return FusedModel(sources, kinds, FusionConfig(width=16, heads=4)), sources


def _reference(sources, stems):
    """Each source run alone: blocks then head, no fusion."""
    outputs = []
    for source, stem in zip(sources, stems):
        frontier = stem
        for block in source.blocks:
            frontier = tuple(block(*frontier))
        outputs.append(source.head(*frontier))
    return outputs


def test_fused_model_starts_equal_to_sources():
    model, sources = _model()
    stems = [(torch.randn(B, 8),) for _ in sources]
    with torch.no_grad():
        fused = model(stems)
        a, b, c = _reference(sources, stems)
    ensemble = (torch.sigmoid(a) + torch.sigmoid(b)) / 2
    torch.testing.assert_close(fused.outputs["click"], ensemble, rtol=0, atol=1e-6)
    torch.testing.assert_close(fused.outputs["buy"], torch.softmax(c, dim=-1), rtol=0, atol=1e-6)


def test_every_level_receives_gradients_after_steps():
    model, sources = _model()
    stems = [(torch.randn(B, 8),) for _ in sources]
    labels = {"click": torch.randint(0, 2, (B,)), "buy": torch.randint(0, 3, (B,))}
    optimizer = torch.optim.AdamW(model.akf_parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        out = model(stems)
        loss = nn.functional.nll_loss(model.mixtures["click"].log_probability(out.head_outputs["click"]), labels["click"])
        loss = loss + nn.functional.nll_loss(model.mixtures["buy"].log_probability(out.head_outputs["buy"]), labels["buy"])
        loss.backward()
        optimizer.step()
    for k, level in enumerate(model.levels):
        for name, parameter in level.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"level {k}: {name}"


def test_source_components_stay_frozen():
    model, sources = _model()
    before = [p.clone() for source in sources for p in source.head.parameters()]
    trainable = {id(p) for p in model.akf_parameters()}
    frozen = [p for source in sources for p in source.head.parameters()]
    assert all(id(p) not in trainable for p in frozen)
    assert all(not p.requires_grad for p in frozen)
    assert all(torch.equal(a, b) for a, b in zip(before, frozen))


def _sets(sources, n=256, seed=1):
    generator = torch.Generator().manual_seed(seed)
    frontiers = [(torch.randn(n, 8, generator=generator),) for _ in sources]
    signal = frontiers[0][0][:, 0] + frontiers[2][0][:, 1]
    labels = {"click": (signal > 0).long(), "buy": torch.bucketize(signal, torch.tensor([-0.5, 0.5]))}
    return TrainingSet(frontiers, labels)


def _train(tmp_path, epochs=3, resume=False, seed=0):
    model, sources = _model(seed)
    kinds = {"click": "binary", "buy": "multiclass"}
    config = TrainConfig(epochs=epochs, patience=10, batch_size=64, lr=1e-2, seed=seed)
    result = train(model, kinds, _sets(sources), _sets(sources, seed=2), config, tmp_path, resume=resume)
    return model, result


def test_training_improves_validation_score(tmp_path):
    _, result = _train(tmp_path)
    assert result.best_epoch >= 1
    assert result.best_score > 0
    assert result.best_metrics["click"]["auc"] > result.baseline["click"]["auc"]


def test_training_is_deterministic(tmp_path):
    first, _ = _train(tmp_path / "a")
    second, _ = _train(tmp_path / "b")
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_reaches_same_weights(tmp_path):
    straight, _ = _train(tmp_path / "straight", epochs=3)
    _train(tmp_path / "split", epochs=2)
    resumed, result = _train(tmp_path / "split", epochs=3, resume=True)
    assert [entry.epoch for entry in result.history] == [1, 2, 3]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoint_loads_weights_only(tmp_path):
    _train(tmp_path, epochs=1)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 1
    assert set(state) >= {"fingerprint", "model", "optimizer", "rng", "baseline", "best", "history"}


def test_task_parameter_names_exact():
    model, _ = _model()
    names = model.task_parameter_names("buy")
    adapters = [f"levels.{k}.adapters.2.{i}.{p}" for k in (0, 1) for i in (0, 1) for p in ("weight", "bias")]
    assert names == ["heads.2.linear.weight", "heads.2.linear.bias", *adapters, "mixtures.buy.mixture_logits"]


def test_stopped_task_keeps_start(tmp_path):
    model, sources = _model()
    start = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    valid = _sets(sources, seed=2)
    # Validation labels invert the training ones, so learning buy on the training rows lowers its validation AUC.
    valid.labels["buy"] = 2 - valid.labels["buy"]
    config = TrainConfig(epochs=3, patience=10, batch_size=64, lr=1e-2)
    result = train(model, {"click": "binary", "buy": "multiclass"}, _sets(sources), valid, config, tmp_path)
    assert result.task_epochs["buy"] == 0
    state = model.state_dict()
    for name in model.task_parameter_names("buy"):
        assert torch.equal(state[name], start[name]), name
    assert all(p.requires_grad for p in model.akf_parameters())
