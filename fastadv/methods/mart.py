"""MART (Wang et al. 2020), METHODS.md section 2, seed 002."""
from __future__ import annotations

from ..ops import logits as L
from ..ops.logits import boosted_cross_entropy  # noqa: F401  (MART's BCE, per sample; public here too)
from .base import NaturalAndAdversarialMethod


def mart_loss(logits_natural, logits_adv, y, beta):
    """(loss, mean BCE(p(x'), y), mean KL(p(x) ‖ p(x'))·(1 − p_y(x))) with loss = BCE + λ·robust."""
    bce, robust = (term.mean() for term in L.mart_loss(logits_natural, logits_adv, y))
    return bce + beta * robust, bce, robust


class MART(NaturalAndAdversarialMethod):
    """``BCE(p(x'), y) + λ·KL(p(x) ‖ p(x'))·(1 − p_y(x))`` with x' = PGD-ce.

    λ = 5 (seed 002), passed as ``beta``. The attack is PGD on the cross-entropy from
    x + 0.001·N(0, I), as in MART's code; the weight (1 − p_y(x)) is not detached, as in MART's
    code.
    """

    name = "mart"
    step_graph = True
    attack_loss = "ce"
    attack_init = "normal"
    default_beta = 5.0
    option_help = {"beta": "weight λ of the KL term"}

    def loss_terms(self, logits_natural, logits_adv, y):
        loss, bce, robust = mart_loss(logits_natural, logits_adv, y, self.beta)
        return loss, {"bce": bce, "robust_loss": robust}
