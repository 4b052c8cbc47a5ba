"""PGD adversarial training (Madry et al. 2018), METHODS.md section 2, seeds 001 and 002."""
from __future__ import annotations

import torch.nn.functional as F

from .base import AttackThenLoss, Objective, accuracy, forward_logits


class PGDAT(AttackThenLoss):
    """``CE(z(x'), y)`` with x' = PGD-ce from a uniform random start (Madry et al. 2018).

    Defaults are CIFAR's (ε=8/255, α=2/255, 10 steps); the trainer passes a dataset's own.
    """

    name = "pgd_at"
    step_graph = True
    attack_loss = "ce"
    attack_init = "uniform"


    def loss(self, model, x, x_adv, y):
        logits_adv = forward_logits(model, x_adv)
        return Objective(F.cross_entropy(logits_adv, y), {"adv_acc": accuracy(logits_adv, y)}, (logits_adv,))
