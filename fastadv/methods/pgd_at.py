"""PGD adversarial training (Madry et al. 2018), METHODS.md section 2, seeds 001 and 002."""
from __future__ import annotations

import torch.nn.functional as F

from ..attacks import PGD
from .base import Method, accuracy, attack_dtype_of, check_positive


class PGDAT(Method):
    """``CE(z(x'), y)`` with x' = PGD-ce from a uniform random start (Madry et al. 2018).

    Defaults are CIFAR's (ε=8/255, α=2/255, 10 steps); the trainer passes a dataset's own.
    """

    name = "pgd_at"

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, norm: str = "linf",
                 attack_dtype: str | None = None):
        check_positive(self.name, eps=eps, alpha=alpha, steps=steps)
        self.eps, self.alpha, self.steps, self.norm = eps, alpha, steps, norm
        self.attack_dtype = attack_dtype_of(self.name, attack_dtype)

    def __call__(self, model, x, y, *, attack_model=None):
        attack = PGD(attack_model or model, eps=self.eps, alpha=self.alpha, steps=self.steps, norm=self.norm,
                     loss="ce", init="uniform", amp_dtype=self.attack_dtype)
        x_adv = attack(x, y)
        logits_adv = model(x_adv)
        loss = F.cross_entropy(logits_adv, y)
        return loss, {"loss": loss.detach(), "adv_acc": accuracy(logits_adv, y)}
