"""Each method's loss against a line-by-line transcription of its METHODS.md equation."""
import math

import pytest
import torch
from torch import nn

from fastadv.methods import METHODS, build_method
from fastadv.methods.mart import mart_loss
from fastadv.methods.trades import trades_loss


def fixed_logits(seed=0, batch=6, classes=5):
    g = torch.Generator().manual_seed(seed)
    z_nat = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 2
    z_adv = z_nat + torch.randn(batch, classes, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (batch,), generator=g)
    return z_nat, z_adv, y


def softmax_row(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def test_trades_matches_its_equation():
    """CE(z(x), y) + β·KL(p(x) ‖ p(x')), per-sample averaged."""
    z_nat, z_adv, y = fixed_logits()
    beta = 6.0
    total = 0.0
    for zn, za, label in zip(z_nat.tolist(), z_adv.tolist(), y.tolist()):
        p, q = softmax_row(zn), softmax_row(za)
        ce = -math.log(p[label])
        kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        total += ce + beta * kl
    loss, _, _ = trades_loss(z_nat, z_adv, y, beta)
    assert loss.item() == pytest.approx(total / len(y), rel=1e-12)


def test_mart_matches_its_equation():
    """BCE(p(x'), y) + λ·KL(p(x) ‖ p(x'))·(1 − p_y(x)), BCE = −log p_y(x') − log(1 − max_{k≠y} p_k(x'))."""
    z_nat, z_adv, y = fixed_logits(1)
    lam = 5.0
    total = 0.0
    for zn, za, label in zip(z_nat.tolist(), z_adv.tolist(), y.tolist()):
        p, q = softmax_row(zn), softmax_row(za)
        bce = -math.log(q[label]) - math.log(1 - max(qk for k, qk in enumerate(q) if k != label))
        kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        total += bce + lam * kl * (1 - p[label])
    loss, _, _ = mart_loss(z_nat, z_adv, y, lam)
    assert loss.item() == pytest.approx(total / len(y), rel=1e-12)


class Recorder(nn.Module):
    """A linear model that records the inputs of its forward passes and its mode at each."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, 4)
        self.calls = []

    def forward(self, x):
        self.calls.append((x.detach().clone(), self.training))
        return self.linear(x.flatten(1))


@pytest.mark.parametrize("name", ["pgd_at", "trades", "mart"])
def test_adversarial_methods_use_their_attack_and_train_mode(name):
    torch.manual_seed(0)
    model = Recorder().train()
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 4, (8,))
    method = build_method(name, eps=0.1, alpha=0.03, steps=3)
    loss, metrics = method(model, x, y)
    loss.backward()
    assert model.training, "the method must leave the model in training mode"
    attack_calls = [c for c in model.calls if not c[1]]
    loss_calls = [c for c in model.calls if c[1]]
    assert len(attack_calls) == 3 + (1 if name == "trades" else 0)  # TRADES: the clean forward once
    inputs = [c[0] for c in loss_calls]
    assert len(inputs) == (1 if name == "pgd_at" else 2)
    x_adv = inputs[-1]
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and not torch.equal(x_adv, x)
    if name != "pgd_at":
        assert torch.equal(inputs[0], x), "the natural batch goes through the model first"
    assert all(torch.isfinite(v) for v in metrics.values())
    assert model.linear.weight.grad is not None


def test_pgd_at_loss_is_cross_entropy_on_the_adversarial_batch():
    torch.manual_seed(0)
    model = Recorder().train()
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 4, (8,))
    loss, _ = build_method("pgd_at", eps=0.1, alpha=0.03, steps=2)(model, x, y)
    x_adv = model.calls[-1][0]
    assert loss.item() == pytest.approx(nn.functional.cross_entropy(model.linear(x_adv.flatten(1)), y).item())


def test_standard_is_clean_cross_entropy():
    model = Recorder().train()
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 4, (8,))
    loss, metrics = build_method("standard")(model, x, y)
    assert len(model.calls) == 1 and torch.equal(model.calls[0][0], x)
    assert loss.item() == pytest.approx(nn.functional.cross_entropy(model.linear(x.flatten(1)), y).item())
    assert set(metrics) == {"loss", "clean_acc"}


def test_registry_and_bad_options():
    assert set(METHODS) >= {"standard", "pgd_at", "trades", "mart"}
    with pytest.raises(ValueError, match="^method must be one of .*'standard'.*, got 'madry'"):
        build_method("madry")
    with pytest.raises(ValueError, match=r"^standard: unknown options eps, steps \(it takes: logit_squeeze\)"):
        build_method("standard", eps=0.1, steps=3)
    with pytest.raises(ValueError, match="^trades: beta must be >= 0, got -1.0"):
        build_method("trades", beta=-1.0)
    with pytest.raises(TypeError, match="^pgd_at: steps must be an integer, got float"):
        build_method("pgd_at", steps=2.5)
    with pytest.raises(ValueError, match="^mart: norm must be one of 'linf', 'l2', got 'l1'"):
        build_method("mart", norm="l1")


def test_paper_defaults():
    assert build_method("trades").beta == 6.0
    assert build_method("mart").beta == 5.0
    assert build_method("pgd_at").eps == pytest.approx(8 / 255)
