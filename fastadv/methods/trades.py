"""TRADES (Zhang et al. 2019), METHODS.md section 2, seeds 000, 002 and 004."""
from __future__ import annotations

import torch.nn.functional as F

from ..ops import logits as L
from .base import NaturalAndAdversarialMethod


def trades_kl(logits_natural, logits_adv):
    """KL(p(x) ‖ p(x')) per batch, averaged over samples (TRADES' ``KLDivLoss(sum) / B``)."""
    return L.trades_kl(logits_natural, logits_adv, reduction="mean")


def trades_loss(logits_natural, logits_adv, y, beta):
    """(loss, CE(z(x), y), KL(p(x) ‖ p(x'))) with loss = CE + β·KL."""
    natural = F.cross_entropy(logits_natural, y)
    robust = trades_kl(logits_natural, logits_adv)
    return natural + beta * robust, natural, robust


class TRADES(NaturalAndAdversarialMethod):
    """``CE(z(x), y) + β·KL(p(x) ‖ p(x'))`` with x' = PGD-kl from x + 0.001·N(0, I).

    β = 6 (seed 002, and the TRADES paper's CIFAR-10 setting). The attack maximises
    KL(p(x) ‖ p(x')) with the clean probabilities computed once; the natural and adversarial
    batches then go through the model in training mode, natural first, as TRADES' code does.
    """

    name = "trades"
    step_graph = True
    attack_loss = "kl"
    attack_init = "normal"
    default_beta = 6.0
    option_help = {"beta": "weight β of the KL term"}

    def loss_terms(self, logits_natural, logits_adv, y):
        loss, natural, robust = trades_loss(logits_natural, logits_adv, y, self.beta)
        return loss, {"natural_loss": natural, "robust_loss": robust}
