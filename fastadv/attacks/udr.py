"""UDR's attack (seed 003 ch. 5, Algorithm 1; METHODS.md section 5): PGD's sign ascent with a
soft-ball pull instead of the projection.

    x⁰ = clip(x + U(−ε, ε));  K times  x_int = xⁿ + η·sign(∇x g(xⁿ)),
                                       xⁿ⁺¹ = clip(x_int − η·λ·∇ĉ(x_int, x))

with the pull ∇ĉ of the ``cost`` (``pixel``: each element outside the L∞ ball pulled back by its
own excess over τ; ``l2``: d inside the per-element ball, d/τ outside; ``linf``: the soft slope on
the largest element; :func:`fastadv.ops.udr_step`): the examples may leave the ball, pulled back
harder the larger λ. Each step is one fused ``udr_step_`` (fastadv.ops.pgd.unchecked); λ is a
float of the call, held by the training method, which updates it from ``fastadv.ops.soft_cost``
(Eq. 19).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import _validate as check
from ..ops.pgd import COSTS, unchecked
from .pgd import PGD

__all__ = ["UDRAttack"]

#: the attack losses g of the UDR methods (the part of g that depends on x')
UDR_LOSSES = ("ce", "kl", "kl_reverse")


class UDRAttack(PGD):
    """UDR's soft-ball PGD (torchattacks' convention: ``x_adv = UDRAttack(model, lam=...)(x, y)``).

    Args:
        model: the classifier (inputs in ``clip``).
        eps: ε of the soft cost, a float or a per-sample tensor [B].
        alpha: the step η (a float > 0): the sign step and the pull's scale.
        steps: number of steps K.
        lam: λ ≥ 0, the weight of the pull (a float, or a one-element tensor, read once per call).
        tau: τ > 0, the soft cost's temperature outside the ball; None for 2η (seed 003 App. E:
            "We choose τ = 2η").
        cost: "pixel" (the default), "l2" or "linf" (METHODS.md section 5); the random start is
            Algorithm 1's x + U(−ε, ε) for every cost.
        loss: the part of g that depends on x': "ce" (UDR-PGD), "kl" (KL(p(x)‖p(x')), TRADES'
            term, UDR-TRADES and UDR-MART) or "kl_reverse" (KL(p(x')‖p(x))).
        restarts, early_stop, amp_dtype, clip, generator: as for :class:`~fastadv.attacks.PGD`.

    ``lam`` can be overridden per call: ``attack(x, y, lam=λ)``. Host synchronisations: PGD's
    (the labels, once per call) plus one read of a tensor ``lam`` before the first step; none
    per step.
    """

    def __init__(self, model: nn.Module, eps=8 / 255, alpha: float = 2 / 255, steps: int = 10, lam=1.0,
                 tau: Optional[float] = None, cost: str = "pixel", loss: str = "ce", restarts: int = 1,
                 early_stop: bool = False, amp_dtype: Optional[torch.dtype] = None, clip=(0.0, 1.0),
                 generator: Optional[torch.Generator] = None):
        owner = type(self).__name__
        cost = check.choice(owner, "cost", cost.lower() if isinstance(cost, str) else cost, COSTS)
        check.choice(owner, "loss", loss, UDR_LOSSES)
        alpha = check.number(owner, "alpha", alpha, low=0.0, low_open=True)
        super().__init__(model, eps, alpha, steps, norm="linf", loss=loss, init="uniform", restarts=restarts,
                         early_stop=early_stop, amp_dtype=amp_dtype, clip=clip, generator=generator)
        self.cost = cost
        self.lam = _lambda(owner, lam)
        self.tau = 2.0 * alpha if tau is None else check.number(owner, "tau", tau, low=0.0, low_open=True)
        if self.tau == float("inf"):
            raise ValueError(f"{owner}: tau must be finite, got inf")

    def perturb(self, x: torch.Tensor, y: torch.Tensor, eps, alpha=None, lam=None) -> torch.Tensor:
        if alpha is not None:
            raise ValueError(f"{type(self).__name__}: alpha is the step η of the constructor (τ = 2η by default); "
                             "build another attack for another step")
        owner = type(self).__name__
        lam = self.lam if lam is None else _lambda(owner, lam)
        # The fused step takes λ as a float: a tensor λ is read here, once per call.
        self._lam_value = check.number(owner, "lam", float(lam), low=0.0) if isinstance(lam, torch.Tensor) else lam
        return super().perturb(x, y, eps)

    def _step(self, x_adv, grad, x, eps, alpha, active) -> None:
        unchecked.udr_step_(x_adv, grad, x, eps, alpha, self._lam_value, self.tau, self.cost, self.clip, active)


def _lambda(owner: str, lam):
    """λ as given (a float ≥ 0, or a one-element tensor, whose value is read when the attack runs)."""
    if isinstance(lam, torch.Tensor):
        if lam.numel() != 1 or not lam.is_floating_point():
            raise ValueError(f"{owner}: lam must be a float or a one-element floating tensor, got shape "
                             f"{list(lam.shape)} and dtype {lam.dtype}")
        return lam.detach()
    return check.number(owner, "lam", lam, low=0.0)

