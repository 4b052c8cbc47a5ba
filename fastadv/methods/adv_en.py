"""ADV-EN: adversarial training of an ensemble seen as one model (seed 003 ch. 4's baseline),
METHODS.md section 3."""
from __future__ import annotations

import torch.nn.functional as F

from .base import Objective, accuracy, as_ensemble, forward_logits
from .pgd_at import PGDAT


class ADVEN(PGDAT):
    """ADV-EN, adversarial training of an ensemble (seed 003 ch. 4): ``CE(f^en(x), y) +
    CE(f^en(x'), y)`` with x' = PGD-ce on the ensemble's output f^en, the log of its members'
    mean probability (seed 003 ch. 4: ``f^en = (1/N) Σ_n f^n``): the ADV loss
    ``L(f(x), y) + L(f(x'), y)`` of seed 003 ch. 4 ('Adversarial Training') with the ensemble as
    the model, attacked white-box and trained as one network."""

    name = "adv_en"
    ensemble = True
    min_members = 2
    ensemble_combine = "prob"
    trains_members = False

    def objective(self, model, x, y, attack_model):
        as_ensemble(self.name, attack_model)
        return super().objective(model, x, y, attack_model)

    def loss(self, model, x, x_adv, y):
        logits_natural = forward_logits(model, x)
        logits_adv = forward_logits(model, x_adv)
        natural = F.cross_entropy(logits_natural, y)
        adversarial = F.cross_entropy(logits_adv, y)
        metrics = {"natural_loss": natural.detach(), "adversarial_loss": adversarial.detach(),
                   "clean_acc": accuracy(logits_natural, y), "adv_acc": accuracy(logits_adv, y)}
        return Objective(natural + adversarial, metrics, (logits_natural, logits_adv))
