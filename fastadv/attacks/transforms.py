"""The image transformations of the EoT task set (:class:`~fastadv.attacks.multi_objective.TransformTasks`,
seed 003 ch. 4, Table 9): each family as ``transform(x, stochastic, generator)`` on a batch of
inputs in [0, 1], with its fixed parameter or, when ``stochastic``, one drawn per sample.
Every transformation is differentiable in x (the attack ascends through it)."""
from __future__ import annotations

import math
from typing import Callable, Dict

import torch
import torch.nn.functional as F


def _affine(x: torch.Tensor, angle_deg: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Rotate by angle (degrees) and zoom by 1/scale about the centre (bilinear, zero fill), per sample."""
    angle = angle_deg * (math.pi / 180)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _parameter(x: torch.Tensor, fixed: float, low: float, high: float, stochastic: bool, generator) -> torch.Tensor:
    """One value per sample [N]: ``fixed`` (the deterministic setting) or U(low, high)."""
    if not stochastic:
        return torch.full((len(x),), fixed, device=x.device, dtype=x.dtype)
    return low + (high - low) * torch.rand(len(x), device=x.device, dtype=x.dtype, generator=generator)


def _per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return values.view((-1,) + (1,) * (x.dim() - 1))


def _flip(x, dim, stochastic, generator):
    """Always (p = 1), or with probability ½ per sample."""
    flipped = x.flip(dim)
    if not stochastic:
        return flipped
    return torch.where(_per_sample(_parameter(x, 0.0, 0.0, 1.0, True, generator) < 0.5, x), flipped, x)


def _crop(x, stochastic, generator):
    """Centre crop of scale s resized back: a zoom by 1/s."""
    no_rotation = torch.zeros(len(x), device=x.device, dtype=x.dtype)
    return _affine(x, no_rotation, _parameter(x, 0.6, 0.6, 1.0, stochastic, generator))


def _brightness(x, stochastic, generator):
    return torch.clamp(x * _per_sample(_parameter(x, 1.3, 1.0, 1.3, stochastic, generator), x), 0, 1)


def _rotation(x, stochastic, generator):
    no_zoom = torch.ones(len(x), device=x.device, dtype=x.dtype)
    return _affine(x, _parameter(x, 10.0, -10.0, 10.0, stochastic, generator), no_zoom)


def _gamma(x, stochastic, generator):
    # x is clamped at 1e-6 first: d(x^γ)/dx is infinite at 0 for γ < 1 (the seed reports that
    # infinite gradient in its stochastic setting).
    return torch.clamp(x, min=1e-6) ** _per_sample(_parameter(x, 1.3, 0.7, 1.3, stochastic, generator), x)


# Seed 003 Table 9: each family as ``transform(x, stochastic, generator)`` on inputs in [0, 1],
# its fixed parameter or its sampled one.
TRANSFORMS: Dict[str, Callable] = {
    "identity": lambda x, stochastic, generator: x,
    "hflip": lambda x, stochastic, generator: _flip(x, -1, stochastic, generator),
    "vflip": lambda x, stochastic, generator: _flip(x, -2, stochastic, generator),
    "crop": _crop,
    "brightness": _brightness,
    "rotation": _rotation,
    "gamma": _gamma,
}
