"""Adversarial logit pairing (Kannan et al. 2018), METHODS.md section 2, seed 001 Eq. 2."""
from __future__ import annotations

import torch.nn.functional as F

from .. import _validate as check
from ..ops import logits as L
from .base import NaturalAndAdversarialMethod


def alp_loss(logits_natural, logits_adv, y, natural_weight, beta):
    """(loss, CE(z(x), y), CE(z(x'), y), ‖z(x) − z(x')‖²), each averaged over the batch, with
    loss = a·CE(z(x), y) + (1 − a)·CE(z(x'), y) + λ‖z(x) − z(x')‖²."""
    natural = F.cross_entropy(logits_natural, y)
    adversarial = F.cross_entropy(logits_adv, y)
    pairing = L.logit_pairing(logits_natural, logits_adv).mean()
    return natural_weight * natural + (1 - natural_weight) * adversarial + beta * pairing, natural, adversarial, pairing


class ALP(NaturalAndAdversarialMethod):
    """``a·CE(z(x), y) + (1 − a)·CE(z(x'), y) + λ‖z(x) − z(x')‖²`` with x' = PGD-ce (seed 001
    Eq. 2, the squared L2 distance of its Eq. 9).

    Defaults: a = 0.5 (``natural_weight``; seed 001 §2, "typically set to 0.5") and λ = 0.5
    (``beta``), the CIFAR-10 pairing weight of seed 001 §5.1 (Kannan et al.'s; use 5.0 for
    CIFAR-100). The attack is Madry's PGD on the cross-entropy from a uniform random start, as
    Kannan et al.'s; both batches go through the model in training mode, natural first.
    ``natural_weight=0`` is seed 001 §5.2's adversarial-only ALP baseline.
    """

    name = "alp"
    step_graph = True
    attack_loss = "ce"
    attack_init = "uniform"
    default_beta = 0.5
    option_help = {"beta": "weight λ of the logit pairing ||z(x) - z(x')||^2",
                   "natural_weight": "weight a of the clean cross-entropy (0: adversarial-only ALP)"}

    def __init__(self, *, natural_weight: float = 0.5, **options):
        super().__init__(**options)
        self.natural_weight = check.number(self.name, "natural_weight", natural_weight, low=0, high=1)

    def loss_terms(self, logits_natural, logits_adv, y):
        loss, natural, adversarial, pairing = alp_loss(logits_natural, logits_adv, y, self.natural_weight, self.beta)
        return loss, {"natural_loss": natural, "adversarial_loss": adversarial, "pairing_loss": pairing}
