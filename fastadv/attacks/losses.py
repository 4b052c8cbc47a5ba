"""Per-sample attack losses on logits (METHODS.md section 1, "losses L").

Each function returns a tensor of shape [B]: one loss per sample, which the attack ascends.
Reductions are left to the caller because the attacks need the per-sample values (restarts
keep the worst point of each sample) and sum them for the gradient (a sum, not a mean, so a
sample's gradient does not depend on the batch size).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.logits import margin_sq_hinge, trades_kl

__all__ = ["cross_entropy", "kl_from_clean", "carlini_wagner", "margin_cross_entropy", "LOSSES"]


def _true_class_mask(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A bool [B, C] mask, True at each sample's label."""
    return torch.zeros_like(z, dtype=torch.bool).scatter_(1, y.unsqueeze(1), True)


def cross_entropy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``CE(z, y)`` per sample: the loss of PGD-AT (Madry) and of FGSM."""
    return F.cross_entropy(z, y, reduction="none")


def kl_from_clean(z_adv: torch.Tensor, z_clean: torch.Tensor) -> torch.Tensor:
    """``KL(p(z_clean) ‖ p(z_adv))`` per sample: the inner maximisation of TRADES, by the fused
    :func:`fastadv.ops.trades_kl`.

    ``z_clean`` are the clean logits, computed once before the attack loop without a graph (they
    do not change from step to step), so only ``z_adv`` gets a gradient.
    """
    return trades_kl(z_clean, z_adv)


def carlini_wagner(z: torch.Tensor, y: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """The CW margin ``min(max_{j≠y} z_j − z_y, κ)`` per sample (CW-PGD, κ=50 in seed 002).

    Positive exactly when the sample is misclassified; ascending it fools the model, and the
    cap κ stops pushing a sample once its wrong-class margin reaches κ.
    """
    true_class = _true_class_mask(z, y)
    z_true = z.gather(1, y.unsqueeze(1)).squeeze(1)
    z_other = z.masked_fill(true_class, float("-inf")).amax(dim=1)
    return (z_other - z_true).clamp(max=kappa)


def margin_cross_entropy(z: torch.Tensor, y: torch.Tensor, delta: float = 0.9) -> torch.Tensor:
    """``CE(z, y) + Σ_{j≠y} max(0, z_j − z_y + δ)²`` per sample: the attack loss of LMA-AT
    (seed 002, Alg. 1, δ=0.9), the margin term by the fused :func:`fastadv.ops.margin_sq_hinge`."""
    return F.cross_entropy(z, y, reduction="none") + margin_sq_hinge(z, y, delta)


LOSSES = {
    "ce": cross_entropy,
    "kl": kl_from_clean,
    "cw": carlini_wagner,
    "margin_ce": margin_cross_entropy,
}
