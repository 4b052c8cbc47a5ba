"""Per-sample attack losses on logits (METHODS.md section 1, "losses L").

Each function returns a tensor of shape [B]: one loss per sample, which the attack ascends.
Reductions are left to the caller because the attacks need the per-sample values (restarts
keep the worst point of each sample) and sum them for the gradient (a sum, not a mean, so a
sample's gradient does not depend on the batch size).

The public functions check their arguments (the labels' range is read: one host sync per call);
the attacks check them once per call and ascend the unchecked forms in :data:`UNCHECKED`, which
read nothing back from the device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _validate as check
from ..ops.logits import unchecked

__all__ = ["cross_entropy", "kl_from_clean", "kl_to_clean", "carlini_wagner", "margin_cross_entropy", "LOSSES"]


def _checked_logits_and_labels(owner: str, z, y) -> torch.Tensor:
    z = check.tensor(owner, "z", z, dim=2)
    return check.labels(owner, y, batch=z.shape[0], classes=z.shape[1], device=z.device)


def cross_entropy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``CE(z, y)`` per sample: the loss of PGD-AT (Madry) and of FGSM."""
    return F.cross_entropy(z, y, reduction="none")


def _kl_from_clean(z_adv: torch.Tensor, z_clean: torch.Tensor) -> torch.Tensor:
    return unchecked.trades_kl(z_clean, z_adv, "none")


def kl_from_clean(z_adv: torch.Tensor, z_clean: torch.Tensor) -> torch.Tensor:
    """``KL(p(z_clean) ‖ p(z_adv))`` per sample: the inner maximisation of TRADES, by the fused
    :func:`fastadv.ops.trades_kl`.

    ``z_clean`` are the clean logits, computed once before the attack loop without a graph (they
    do not change from step to step), so only ``z_adv`` gets a gradient.
    """
    owner = "kl_from_clean"
    z_adv = check.tensor(owner, "z_adv", z_adv, dim=2)
    z_clean = check.tensor(owner, "z_clean", z_clean, like=z_adv, like_name="z_adv")
    return _kl_from_clean(z_adv, z_clean)


def _kl_to_clean(z_adv: torch.Tensor, z_clean: torch.Tensor) -> torch.Tensor:
    return unchecked.trades_kl(z_adv, z_clean, "none")


def kl_to_clean(z_adv: torch.Tensor, z_clean: torch.Tensor) -> torch.Tensor:
    """``KL(p(z_adv) ‖ p(z_clean))`` per sample: the divergence of UDR-TRADES and UDR-MART
    (seed 003 ch. 5, METHODS.md section 5), the reverse of TRADES' order, by the fused
    :func:`fastadv.ops.trades_kl` with its arguments swapped. ``z_clean`` as for
    :func:`kl_from_clean`: computed once before the attack loop, without a graph."""
    owner = "kl_to_clean"
    z_adv = check.tensor(owner, "z_adv", z_adv, dim=2)
    z_clean = check.tensor(owner, "z_clean", z_clean, like=z_adv, like_name="z_adv")
    return _kl_to_clean(z_adv, z_clean)


#: κ of the CW margin: 50, the cap of seed 002's CW evaluation (and of seed 003 ch. 4's CW attack)
CW_KAPPA = 50.0


def carlini_wagner(z: torch.Tensor, y: torch.Tensor, kappa: float = CW_KAPPA) -> torch.Tensor:
    """The CW margin ``min(max_{j≠y} z_j − z_y, κ)`` per sample (CW-PGD, κ=50 in seed 002).

    Positive exactly when the sample is misclassified; ascending it fools the model, and the
    cap κ stops pushing a sample once its wrong-class margin reaches κ.
    """
    true_class = torch.zeros_like(z, dtype=torch.bool).scatter_(1, y.unsqueeze(1), True)
    z_true = z.gather(1, y.unsqueeze(1)).squeeze(1)
    z_other = z.masked_fill(true_class, float("-inf")).amax(dim=1)
    return (z_other - z_true).clamp(max=kappa)


def _margin_cross_entropy(z: torch.Tensor, y: torch.Tensor, delta: float = 0.9) -> torch.Tensor:
    return F.cross_entropy(z, y, reduction="none") + unchecked.margin_sq_hinge(z, y, delta)


def margin_cross_entropy(z: torch.Tensor, y: torch.Tensor, delta: float = 0.9) -> torch.Tensor:
    """``CE(z, y) + Σ_{j≠y} max(0, z_j − z_y + δ)²`` per sample: the attack loss of LMA-AT
    (seed 002, Alg. 1, δ=0.9), the margin term by the fused :func:`fastadv.ops.margin_sq_hinge`."""
    owner = "margin_cross_entropy"
    y = _checked_logits_and_labels(owner, z, y)
    return _margin_cross_entropy(z, y, check.number(owner, "delta", delta))


#: The attack losses by name, as the public (checked) functions.
LOSSES = {
    "ce": cross_entropy,
    "kl": kl_from_clean,
    "kl_reverse": kl_to_clean,
    "cw": carlini_wagner,
    "margin_ce": margin_cross_entropy,
}

#: The same losses as the attack loops call them: labels already int64, contiguous and in range.
#: cross_entropy and carlini_wagner are torch ops, which check indices themselves (an error on the
#: CPU, a device-side assert on the GPU) without reading them back.
UNCHECKED = {
    "ce": cross_entropy,
    "kl": _kl_from_clean,
    "kl_reverse": _kl_to_clean,
    "cw": carlini_wagner,
    "margin_ce": _margin_cross_entropy,
}

#: The losses whose target is the clean logits z(x) rather than the labels (computed once per call).
CLEAN_TARGET_LOSSES = ("kl", "kl_reverse")
