"""TRADES (Zhang et al. 2019), METHODS.md section 2, seeds 000, 002 and 004."""
from __future__ import annotations

import torch.nn.functional as F

from ..attacks import PGD
from .base import Method, accuracy, attack_dtype_of, check_positive


def trades_kl(logits_natural, logits_adv):
    """KL(p(x) ‖ p(x')) per batch, averaged over samples (TRADES' ``KLDivLoss(sum) / B``)."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), F.log_softmax(logits_natural, dim=1),
                    reduction="batchmean", log_target=True)


def trades_loss(logits_natural, logits_adv, y, beta):
    """(loss, CE(z(x), y), KL(p(x) ‖ p(x'))) with loss = CE + β·KL."""
    natural = F.cross_entropy(logits_natural, y)
    robust = trades_kl(logits_natural, logits_adv)
    return natural + beta * robust, natural, robust


class TRADES(Method):
    """``CE(z(x), y) + β·KL(p(x) ‖ p(x'))`` with x' = PGD-kl from x + 0.001·N(0, I).

    β = 6 (seed 002, and the TRADES paper's CIFAR-10 setting). The attack maximises
    KL(p(x) ‖ p(x')) with the clean probabilities computed once; the natural and adversarial
    batches then go through the model in training mode, natural first, as TRADES' code does.
    """

    name = "trades"

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, beta: float = 6.0,
                 norm: str = "linf",
                 attack_dtype: str | None = None):
        check_positive(self.name, eps=eps, alpha=alpha, steps=steps, beta=beta)
        self.eps, self.alpha, self.steps, self.beta, self.norm = eps, alpha, steps, beta, norm
        self.attack_dtype = attack_dtype_of(self.name, attack_dtype)

    def __call__(self, model, x, y, *, attack_model=None):
        attack = PGD(attack_model or model, eps=self.eps, alpha=self.alpha, steps=self.steps, norm=self.norm,
                     loss="kl", init="normal", amp_dtype=self.attack_dtype)
        x_adv = attack(x, y)
        logits_natural = model(x)
        logits_adv = model(x_adv)
        loss, natural, robust = trades_loss(logits_natural, logits_adv, y, self.beta)
        return loss, {"loss": loss.detach(), "natural_loss": natural.detach(), "robust_loss": robust.detach(),
                      "clean_acc": accuracy(logits_natural, y), "adv_acc": accuracy(logits_adv, y)}
