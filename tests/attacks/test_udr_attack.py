"""UDR's soft-ball attack (seed 003 ch. 5 Alg. 1, METHODS.md section 5): step for step against a
float64 transcription of the algorithm on the reference step, the soft ball (no projection, the
pull of λ), the reverse-KL loss by hand, per-call λ, model state, and bad input."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastadv.attacks import PGD, UDRAttack, kl_to_clean
from fastadv.ops import pgd_init
from fastadv.reference import pgd as reference


def mlp() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)).double()


def batch(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


def transcription(model, x, y, start, eps, eta, lam, tau, cost, steps, loss):
    """Algorithm 1, step 2, in float64 with the reference step: x_int = xⁿ + η·sign(∇g), then
    xⁿ⁺¹ = clip(x_int − η·λ·∇ĉ(x_int, x))."""
    with torch.no_grad():
        clean = model(x)
    x_adv = start.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        z = model(x_adv)
        if loss == "ce":
            objective = F.cross_entropy(z, y, reduction="sum")
        elif loss == "kl":  # KL(p(x) ‖ p(x')) by its definition, TRADES' term
            objective = (F.softmax(clean, 1) * (F.log_softmax(clean, 1) - F.log_softmax(z, 1))).sum()
        else:  # KL(p(x') ‖ p(x)) by its definition
            objective = (F.softmax(z, 1) * (F.log_softmax(z, 1) - F.log_softmax(clean, 1))).sum()
        (grad,) = torch.autograd.grad(objective, x_adv)
        x_adv = reference.udr_step(x_adv.detach(), grad, x, eps, eta, lam, tau, cost, (0.0, 1.0))
    return x_adv


@pytest.mark.parametrize("cost", ["pixel", "l2", "linf"])
@pytest.mark.parametrize("loss", ["ce", "kl", "kl_reverse"])
@pytest.mark.parametrize("lam", [0.0, 0.7, 3.0])
def test_matches_the_algorithm_step_for_step(cost, loss, lam):
    """From Algorithm 1's start x + U(−ε, ε) (every cost), the steps of the reference."""
    model, (x, y) = mlp(), batch()
    eps, eta, steps = 0.2, 0.05, 7
    attack = UDRAttack(model, eps=eps, alpha=eta, steps=steps, lam=lam, cost=cost, loss=loss,
                    generator=torch.Generator().manual_seed(5))
    got = attack(x, y)
    start = pgd_init(x, eps, "linf", "uniform", generator=torch.Generator().manual_seed(5))
    expected = transcription(model, x, y, start, eps, eta, lam, 2 * eta, cost, steps, loss)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    assert attack.tau == 2 * eta, "τ = 2η by default (seed 003 App. E)"


def test_the_start_is_uniform_in_the_cost_ball():
    """Algorithm 1 (a): x + U(−ε, ε) for the L∞ cost; no step taken: λ and η play no part."""
    x, _ = batch(200)
    x = x.clamp(0.3, 0.7)  # no clipping of the start
    start = pgd_init(x, 0.2, "linf", "uniform", generator=torch.Generator().manual_seed(1))
    delta = (start - x).flatten()
    assert delta.abs().max() <= 0.2 and delta.min() < -0.19 and delta.max() > 0.19
    assert abs(delta.mean().item()) < 0.01


@pytest.mark.parametrize("cost", ["pixel", "l2"])
def test_no_projection_the_examples_leave_the_ball_and_the_pull_brings_them_back(cost):
    """λ = 0: 10 sign steps of η from the start, no projection: far outside the ε-ball. A positive
    λ pulls the pixels beyond ε back (the soft ball); the clip box holds throughout."""
    model, (x, y) = mlp(), batch(64)
    far = UDRAttack(model, eps=0.1, alpha=0.05, steps=10, lam=0.0, cost=cost)(x, y)
    near = UDRAttack(model, eps=0.1, alpha=0.05, steps=10, lam=4.0, cost=cost)(x, y)
    beyond = lambda a: ((a - x).abs() > 0.1 + 1e-12).double().mean()  # noqa: E731
    assert beyond(far) > 0.3
    assert beyond(near) < 0.5 * beyond(far)
    for a in (far, near):
        assert a.min() >= 0 and a.max() <= 1
    projected = PGD(model, eps=0.1, alpha=0.05, steps=10)(x, y)
    assert beyond(projected) == 0


def test_lambda_per_call_and_as_a_tensor():
    model, (x, y) = mlp(), batch()
    attack = UDRAttack(model, eps=0.2, alpha=0.05, steps=3, lam=0.0, generator=torch.Generator().manual_seed(0))
    per_call = attack(x, y, lam=torch.tensor(2.5, dtype=torch.float64))
    fixed = UDRAttack(model, eps=0.2, alpha=0.05, steps=3, lam=2.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(per_call, fixed(x, y))
    assert attack.lam == 0.0, "a per-call λ does not change the attack's own"


def test_kl_to_clean_by_hand():
    g = torch.Generator().manual_seed(2)
    z_adv = torch.randn(5, 4, generator=g, dtype=torch.float64)
    z_clean = torch.randn(5, 4, generator=g, dtype=torch.float64)
    for got, a, c in zip(kl_to_clean(z_adv, z_clean).tolist(), z_adv.tolist(), z_clean.tolist()):
        p = [math.exp(v) / sum(math.exp(u) for u in a) for v in a]
        q = [math.exp(v) / sum(math.exp(u) for u in c) for v in c]
        assert got == pytest.approx(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)), rel=1e-10)


def test_the_model_keeps_its_mode_and_parameters_get_no_gradient():
    model, (x, y) = mlp(), batch()
    model.train()
    UDRAttack(model, eps=0.2, alpha=0.05, steps=2)(x, y)
    assert model.training and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kwargs, message", [
    (dict(tau=0.0), "UDRAttack: tau must be > 0"),
    (dict(tau=-1.0), "UDRAttack: tau must be > 0"),
    (dict(tau=math.inf), "UDRAttack: tau must be finite"),
    (dict(alpha=0.0), "UDRAttack: alpha must be > 0"),
    (dict(lam=-0.1), "UDRAttack: lam must be >= 0"),
    (dict(lam=torch.ones(2)), "UDRAttack: lam must be a float or a one-element floating tensor"),
    (dict(cost="l1"), "UDRAttack: cost must be one of 'pixel', 'l2', 'linf'"),
    (dict(loss="cw"), "UDRAttack: loss must be one of 'ce', 'kl', 'kl_reverse'"),
    (dict(steps=0), "UDRAttack: steps must be an integer >= 1"),
])
def test_bad_arguments_are_refused_by_name(kwargs, message):
    with pytest.raises((ValueError, TypeError), match="^" + message.replace("(", r"\(")):
        UDRAttack(mlp(), **kwargs)


def test_a_negative_tensor_lambda_is_refused_when_read():
    model, (x, y) = mlp(), batch()
    with pytest.raises(ValueError, match="^UDRAttack: lam must be >= 0"):
        UDRAttack(model, lam=torch.tensor(-1.0))(x, y)
    with pytest.raises(ValueError, match="^UDRAttack: alpha is the step"):
        UDRAttack(model)(x, y, alpha=0.1)
