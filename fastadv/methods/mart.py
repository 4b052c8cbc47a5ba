"""MART (Wang et al. 2020), METHODS.md section 2, seed 002."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import NaturalAndAdversarialMethod


def boosted_cross_entropy(logits_adv, y):
    """MART's BCE per sample: ``−log p_y(x') − log(1 − max_{k≠y} p_k(x'))``."""
    log_probs = F.log_softmax(logits_adv, dim=1)
    probs = log_probs.exp()
    other = probs.masked_fill(F.one_hot(y, probs.shape[1]).bool(), float("-inf")).amax(dim=1)
    # 1 − max p_k can round to 0 for a confidently wrong prediction; MART's code adds 1e-4 here.
    return -log_probs.gather(1, y[:, None]).squeeze(1) - torch.log1p(-other.clamp(max=1 - 1e-4))


def mart_loss(logits_natural, logits_adv, y, beta):
    """(loss, mean BCE(p(x'), y), mean KL(p(x) ‖ p(x'))·(1 − p_y(x))) with loss = BCE + λ·robust."""
    probs_natural = F.softmax(logits_natural, dim=1)
    kl = (probs_natural * (F.log_softmax(logits_natural, dim=1) - F.log_softmax(logits_adv, dim=1))).sum(dim=1)
    weight = 1 - probs_natural.gather(1, y[:, None]).squeeze(1)
    bce = boosted_cross_entropy(logits_adv, y).mean()
    robust = (kl * weight).mean()
    return bce + beta * robust, bce, robust


class MART(NaturalAndAdversarialMethod):
    """``BCE(p(x'), y) + λ·KL(p(x) ‖ p(x'))·(1 − p_y(x))`` with x' = PGD-ce.

    λ = 5 (seed 002), passed as ``beta``. The attack is PGD on the cross-entropy from
    x + 0.001·N(0, I), as in MART's code; the weight (1 − p_y(x)) is not detached, as in MART's
    code.
    """

    name = "mart"
    attack_loss = "ce"
    attack_init = "normal"
    default_beta = 5.0

    def loss_terms(self, logits_natural, logits_adv, y):
        loss, bce, robust = mart_loss(logits_natural, logits_adv, y, self.beta)
        return loss, {"bce": bce, "robust_loss": robust}
