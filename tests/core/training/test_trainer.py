import pytest
import torch
from torch import nn

from core.training import EarlyStopping, TrainConfig, Trainer


def _blobs(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centres = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    return centres[y] + 0.6 * torch.randn(n, 2, generator=g), y


def _fit(config: TrainConfig, evaluate=None):
    x, y = _blobs()
    xv, yv = _blobs(128, seed=1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))

    def batches(epoch):
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(y), 32):
            yield x[perm[i : i + 32]], y[perm[i : i + 32]]

    def loss_fn(m, batch):
        return nn.functional.cross_entropy(m(batch[0]).float(), batch[1])

    def default_eval(m):
        return {"accuracy": (m(xv).argmax(-1) == yv).float().mean().item()}

    trainer = Trainer(model, config)
    return model, trainer.fit(batches, 8, loss_fn, evaluate or default_eval)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_learns_separable_blobs(precision):
    model, result = _fit(TrainConfig(epochs=6, lr=0.05, precision=precision, patience=0))
    assert result.best_metrics["accuracy"] > 0.9  # chance is 1/3
    assert len(result.history) == 6 and result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_grad_accumulation_trains():
    _, result = _fit(TrainConfig(epochs=6, lr=0.05, grad_accum=3, patience=0))
    assert result.best_metrics["accuracy"] > 0.9


def test_early_stopping_restores_best_state():
    scores = iter([0.5, 0.8, 0.6, 0.7, 0.9, 0.95])
    seen = []

    def evaluate(m):
        seen.append(m[0].weight.detach().clone())
        return {"accuracy": next(scores)}

    model, result = _fit(TrainConfig(epochs=6, lr=0.05, patience=2), evaluate)
    assert result.stopped_early and len(result.history) == 4
    assert result.best_epoch == 1 and result.best_metrics == {"accuracy": 0.8}
    torch.testing.assert_close(model[0].weight, seen[1])


def test_missing_monitored_metric_is_an_error():
    with pytest.raises(ValueError, match="monitored 'accuracy'"):
        _fit(TrainConfig(epochs=1), lambda m: {"loss": 1.0})


def test_early_stopping_modes():
    stop = EarlyStopping(patience=1, mode="min")
    assert stop.step(1.0) and stop.step(0.5) and not stop.step(0.7)
    assert stop.should_stop
    with pytest.raises(ValueError, match="NaN"):
        stop.step(float("nan"))


@pytest.mark.parametrize(
    "field,value",
    [
        ("epochs", 0),
        ("lr", 0.0),
        ("precision", "int4"),
        ("mode", "up"),
        ("grad_accum", 0),
        ("warmup_ratio", 1.0),
    ],
)
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_frozen_model_is_rejected():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        Trainer(model, TrainConfig())
