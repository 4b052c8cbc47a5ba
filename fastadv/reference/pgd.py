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
