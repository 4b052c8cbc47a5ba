"""Naive pure-PyTorch oracles of the pgd family (METHODS.md section 1).

Written the obvious way, in the accumulation dtype, one torch op per line of the equation.
These are what every kernel is tested against; they are never changed to agree with a kernel.
"""
from __future__ import annotations

import torch


def _per_sample(value, batch: int, like: torch.Tensor) -> torch.Tensor:
    """eps or alpha as a [B, 1, 1, ...] tensor that broadcasts over one sample."""
    values = torch.as_tensor(value, dtype=like.dtype, device=like.device).expand(batch)
    return values.reshape((batch,) + (1,) * (like.dim() - 1))


def _row_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).reshape((t.shape[0],) + (1,) * (t.dim() - 1))


def pgd_step(x_adv, grad, x, eps, alpha, norm="linf", clip=(0.0, 1.0), active=None):
    """One projected gradient ascent step; returns the new adversarial batch.

    linf: clip(proj_{|d|_inf <= eps}(x_adv + alpha * sign(grad)))
    l2:   clip(proj_{|d|_2 <= eps}(x_adv + alpha * grad / |grad|_2)), no step where grad = 0.
    A NaN in any input propagates to the output of its sample.
    """
    accumulate = torch.float64 if x_adv.dtype == torch.float64 else torch.float32
    x_adv_acc, grad_acc, x_acc = (t.to(accumulate) for t in (x_adv, grad, x))
    batch = x_adv.shape[0]
    eps_b = _per_sample(eps, batch, x_adv_acc)
    alpha_b = _per_sample(alpha, batch, x_adv_acc)
    if norm == "linf":
        # fastadv propagates NaN (torch.sign alone would map NaN to 0 and hide it).
        sign = torch.where(torch.isnan(grad_acc), grad_acc, torch.sign(grad_acc))
        stepped = x_adv_acc + alpha_b * sign
        new = torch.clamp(stepped, min=x_acc - eps_b, max=x_acc + eps_b)
    elif norm == "l2":
        grad_norm = _row_norm(grad_acc)
        direction = torch.where(grad_norm == 0, torch.zeros_like(grad_acc), grad_acc / grad_norm)
        delta = x_adv_acc + alpha_b * direction - x_acc
        delta_norm = _row_norm(delta)
        shrink = torch.where(delta_norm > eps_b, eps_b / delta_norm, torch.ones_like(delta_norm))
        new = x_acc + delta * shrink
    else:
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if clip is not None:
        new = torch.clamp(new, clip[0], clip[1])
    if active is not None:
        new = torch.where(active.reshape((batch,) + (1,) * (x_adv.dim() - 1)), new, x_adv_acc)
    return new.to(x_adv.dtype)


#: The costs of UDR's soft ball (METHODS.md section 5).
COSTS = ("pixel", "l2", "linf")


def _sign(t: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isnan(t), t, torch.sign(t))


def _check_cost(cost: str) -> None:
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")


def _soft(c, eps_b, tau):
    """ĉ from c: c inside the ball (c < ε), ε + (c − ε)/τ outside."""
    return torch.where(c < eps_b, c, eps_b + (c - eps_b) / tau)


def soft_cost(x_adv, x, eps, tau, cost="pixel"):
    """The statistic UDR's λ update compares with ε, per sample [B] (METHODS.md section 5), with
    d = x_adv − x: for ``pixel`` the mean |d| over the sample's elements; for ``l2`` and ``linf``
    ĉ∞, the soft cost of c = max |d| (c if c < ε, else ε + (c − ε)/τ)."""
    _check_cost(cost)
    accumulate = torch.float64 if x_adv.dtype == torch.float64 else torch.float32
    delta = (x_adv.to(accumulate) - x.to(accumulate)).flatten(1)
    if cost == "pixel":
        return delta.abs().mean(dim=1).to(x_adv.dtype)
    eps_b = torch.as_tensor(eps, dtype=accumulate, device=x_adv.device).expand(x_adv.shape[0])
    return _soft(delta.abs().amax(dim=1), eps_b, tau).to(x_adv.dtype)


def soft_cost_gradient(x_adv, x, eps, tau, cost="pixel"):
    """UDR's pull ∇ĉ(x_adv, x) with respect to x_adv, [B, ...], with d = x_adv − x:

    - ``pixel``: (d − clamp(d, −ε, ε))/τ, each element outside the L∞ ball pulled back by its own
      excess, the others not at all;
    - ``l2``: c = ½‖d‖² with the per-element ball test: d where |d| < ε, d/τ where |d| ≥ ε;
    - ``linf``: c = max |d|: the slope (1 if c < ε, else 1/τ) times the minimum-norm subgradient,
      sign(d_k)/|T| on the elements T where |d_k| reaches the maximum (ties share it), 0
      elsewhere and where d = 0."""
    _check_cost(cost)
    accumulate = torch.float64 if x_adv.dtype == torch.float64 else torch.float32
    delta = x_adv.to(accumulate) - x.to(accumulate)
    batch = x_adv.shape[0]
    shape = (batch,) + (1,) * (x_adv.dim() - 1)
    eps_b = torch.as_tensor(eps, dtype=accumulate, device=x_adv.device).expand(batch).reshape(shape)
    if cost == "pixel":
        return (delta - torch.maximum(torch.minimum(delta, eps_b), -eps_b)) / tau
    if cost == "l2":
        return torch.where(delta.abs() < eps_b, delta, delta / tau)
    c = delta.flatten(1).abs().amax(dim=1).reshape(shape)
    ties = delta.abs() == c
    count = ties.flatten(1).sum(dim=1).reshape(shape).to(accumulate)
    unit = torch.where(ties & (c > 0), _sign(delta) / count, torch.zeros_like(delta))
    slope = torch.where(c < eps_b, torch.ones_like(c), torch.full_like(c, 1.0 / tau))
    return slope * unit


def udr_step(x_adv, grad, x, eps, eta, lam, tau, cost="pixel", clip=(0.0, 1.0), active=None):
    """UDR's attack step (METHODS.md section 5): x_int = x_adv + η·sign(grad), then
    x' = clip(x_int − η·λ·∇ĉ(x_int, x)): no projection onto the ball. ``eps`` a float or [B]."""
    accumulate = torch.float64 if x_adv.dtype == torch.float64 else torch.float32
    x_adv_acc, grad_acc, x_acc = (t.to(accumulate) for t in (x_adv, grad, x))
    intermediate = x_adv_acc + eta * _sign(grad_acc)
    new = intermediate - eta * lam * soft_cost_gradient(intermediate, x_acc, eps, tau, cost)
    if clip is not None:
        new = torch.clamp(new, clip[0], clip[1])
    if active is not None:
        new = torch.where(active.reshape((x_adv.shape[0],) + (1,) * (x_adv.dim() - 1)), new, x_adv_acc)
    return new.to(x_adv.dtype)
