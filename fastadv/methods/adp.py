"""ADP, adaptive diversity promoting (Pang et al. 2019), adversarial version: seed 003 ch. 4's
baseline, METHODS.md section 3."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _validate as check
from ..ensemble import log_mean_probability
from ..ops import logits as L
from .base import AdversarialMethod, Objective, accuracy, as_ensemble, with_metrics


def entropy_of(log_p: torch.Tensor) -> torch.Tensor:
    """H(p) per sample, from log p (the ensemble's :func:`log_mean_probability`)."""
    return -(log_p.exp() * log_p).sum(-1)


def log_det_diversity(member_logits: torch.Tensor, y: torch.Tensor, ridge: float) -> torch.Tensor:
    """``log det(M̃ᵀM̃ + ridge·I)`` per sample, M̃'s columns the members' L2-normalised
    non-true-class probability vectors: M̃ᵀM̃ is ``masked_gram`` of the probabilities. The
    determinant of the small [M, M] matrix is taken in float64."""
    gram = L.unchecked.masked_gram(torch.softmax(member_logits, dim=-1), y, True).double()
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    return torch.logdet(gram + ridge * eye).to(member_logits.dtype)


def adp_loss(member_logits, y, entropy_weight, beta, ridge, log_mean=None):
    """(loss, Σ_k CE, H(mean_k p_k), log det) of METHODS.md's ADP on [M, B, C] logits:
    ``Σ_k CE(z_k, y) − α·H(mean_k p_k) − β·log det(M̃ᵀM̃ + ridge·I)``, the last two averaged over
    the batch; ``log_mean``, the ensemble's log mean probability, when the caller has it."""
    members, batch, classes = member_logits.shape
    ce = F.cross_entropy(member_logits.reshape(-1, classes), y.repeat(members), reduction="none")
    ce = ce.view(members, batch).mean(1).sum()
    if log_mean is None:
        log_mean = log_mean_probability(member_logits)
    entropy = entropy_of(log_mean).mean()
    log_det = log_det_diversity(member_logits, y, ridge).mean()
    return ce - entropy_weight * entropy - beta * log_det, ce, entropy, log_det


class ADP(AdversarialMethod):
    """``Σ_k CE(z_k(x), y) + Σ_k CE(z_k(x'), y) − ADP(x) − ADP(x')``, ``ADP(·) = α·H(mean_k p_k) +
    β·log det(M̃ᵀM̃ + 1e-6·I)`` on that input (Pang et al. 2019, Eq. 7), x' = PGD-ce examples of
    the ensemble (its output the log of the members' mean probability): the adversarial ADP that
    seed 003 ch. 4 compares against, ADP's loss on the clean and on the adversarial batch. M̃'s
    columns are the members' non-true-class probability vectors, each L2-normalised; the ridge
    1e-6 is ADP's code's ``det_offset``. α = 2 (``entropy_weight``), β = 0.5 (``beta``), ADP's
    CIFAR-10 setting."""

    name = "adp"
    ensemble = True
    min_members = 2
    max_members = L.MAX_MEMBERS  # masked_gram's
    ensemble_combine = "prob"
    default_beta = 0.5
    option_help = {"beta": "weight β of the log-determinant (diversity) term",
                   "entropy_weight": "weight α of the ensemble entropy H(mean_k p_k)",
                   "logdet_ridge": "added to the diagonal of M̃ᵀM̃ before the log-determinant (ADP's det_offset)"}

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, beta: float | None = None,
                 norm: str = "linf", attack_dtype: str | None = None, *, entropy_weight: float = 2.0,
                 logdet_ridge: float = 1e-6, logit_squeeze: float = 0.0):
        super().__init__(eps, alpha, steps, norm, attack_dtype, logit_squeeze=logit_squeeze)
        self.beta = check.number(self.name, "beta", self.default_beta if beta is None else beta, low=0)
        self.entropy_weight = check.number(self.name, "entropy_weight", entropy_weight, low=0)
        self.logdet_ridge = check.number(self.name, "logdet_ridge", logdet_ridge, low=0, low_open=True)

    def objective(self, model, x, y, attack_model):
        ensemble = as_ensemble(self.name, attack_model)
        attacked = self.attack(ensemble, x, y)
        terms, logits, metrics = [], [], {}
        for view, inputs in (("natural", x), ("adv", attacked.x_adv)):
            member_logits = ensemble.member_logits(inputs)
            if member_logits.dtype in (torch.float16, torch.bfloat16):  # autocast's: the loss in float32
                member_logits = member_logits.float()
            log_mean = log_mean_probability(member_logits)
            loss, ce, entropy, log_det = adp_loss(member_logits, y, self.entropy_weight, self.beta, self.logdet_ridge,
                                                  log_mean)
            terms.append(loss)
            logits.extend(member_logits)
            metrics.update({f"{view}_member_ce": ce.detach(), f"{view}_ensemble_entropy": entropy.detach(),
                            f"{view}_log_det": log_det.detach()})
            metrics["clean_acc" if view == "natural" else "adv_acc"] = accuracy(log_mean, y)
        return with_metrics(Objective(terms[0] + terms[1], metrics, tuple(logits)), attacked.metrics)
