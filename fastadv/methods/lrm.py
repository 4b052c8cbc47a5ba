"""LRM, logit regularization methods (Summers and Dinneen), METHODS.md section 2, seed 001
§4.1 and §5.2."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops import logits as L
from .base import AdversarialMethod, Objective, accuracy, check_range, forward_logits


def lrm_loss(logits_natural, logits_adv, y, y_other, weight, smoothing, ratio):
    """(loss, L_adv, H, c) with loss = L_adv + c·H, the terms of LRM before logit squeezing:

    - ``L_adv = mean CE(z(x'), t)``, t the mixup of the label-smoothed targets of y (weight
      ``weight``) and ``y_other`` (weight 1 − ``weight``), as the per-label sum mixup's code writes;
    - ``H = mean H(p(x), z(x'))``, the cross-entropy of the distribution p(x) against the
      logits z(x'), with the gradient flowing through both;
    - ``c = r·sg(L_adv / H)``, so that c·H equals r·L_adv in value.
    """
    adversarial = weight * L.smoothed_cross_entropy(logits_adv, y, smoothing)
    if weight < 1:
        adversarial = adversarial + (1 - weight) * L.smoothed_cross_entropy(logits_adv, y_other, smoothing)
    adversarial = adversarial.mean()
    pairing = L.soft_cross_entropy(logits_adv, F.softmax(logits_natural, dim=1)).mean()
    coefficient = ratio * (adversarial / pairing).detach()
    return adversarial + coefficient * pairing, adversarial, pairing, coefficient


class LRM(AdversarialMethod):
    """``L_adv + c·H(p(x), z(x')) + β(‖z(x)‖² + ‖z(x')‖²)``, ``c = r·sg(L_adv / H)``: seed 001
    §5.2's combination of adversarial-only training (a = 0 in its Eq. 1) with label smoothing s
    (Eq. 8), mixup on the inputs and the decoupled logit pairing of §4.1 (Eq. 11, h = the
    cross-entropy between the distributions the logits induce).

    Defaults: seed 001 §5.2's CIFAR-10 ones, s = 0.1 (``smoothing``), β = 1e-3 and r = 0.125
    (``pairing_ratio``); CIFAR-100: β = 3e-5, r = 0.95; SVHN: s = 0.2, β = 1e-4, r = 0.95. β is
    this method's ``logit_squeeze``: the regulariser ``β(mean‖z(x)‖² + mean‖z(x')‖²)`` is exactly
    the logit squeezing every method has (fastadv.methods.base), so it is not written twice.

    How the seed's open points are resolved:

    - Mixup: seed 001 uses VH-mixup (its reference [24]) on CIFAR, which it names without
      defining, so fastadv uses the regular mixup of Zhang et al. 2018 (its reference [29],
      what the seed uses on SVHN): one λ ~ Beta(α, α) per batch and a random pairing of the
      batch with itself, as mixup's code does, with α = 1 (``mixup_alpha``; mixup's CIFAR
      setting, which the seed does not give). ``mixup_alpha=0`` turns mixup off. λ is folded to
      max(λ, 1 − λ), which leaves the distribution of mixed pairs unchanged (the random pairing
      is as likely as its inverse) and makes y the dominant label of every mixed input.
    - Mixup is a data augmentation of the inputs: it is applied first, and x below is the
      mixed batch; the targets are the mixup of the smoothed targets (label smoothing is
      "a preprocessing step on the labels", §4).
    - The adversarial example x' is PGD-ce from a uniform start (Madry's, seed 001 §2) on the
      mixed input, against the dominant label y: fastadv's attacks take class labels, not the
      soft mixed targets an attack in CleverHans (the seed's library) would receive.
    - p(x) carries gradient in H: §4.1 says the pairing has "a mild expanding effect (if the
      logits are very similar)", which only the gradient through p(x) produces (with p(x)
      detached, H's gradient vanishes when z(x) = z(x')).
    - c is computed on the batch means (one ratio per batch), and both batches go through the
      model in training mode, natural first, as in the other natural-and-adversarial methods.
    - The ratio: METHODS.md's ``c·H = r·L_adv`` is followed. Seed 001 §5.2 words r as "the
      ratio between the adversarial training loss and the pairing loss", which would read
      ``L_adv / (c·H) = r`` (r = 0.125 making the pairing 8 times L_adv, "which focuses the loss
      on keeping adversarial and original examples similar").

    ``clean_acc`` and ``adv_acc`` are measured on the mixed batch against its dominant label.
    """

    name = "lrm"
    attack_loss = "ce"
    attack_init = "uniform"

    def __init__(self, *, smoothing: float = 0.1, pairing_ratio: float = 0.125, mixup_alpha: float = 1.0,
                 logit_squeeze: float = 1e-3, **options):
        super().__init__(logit_squeeze=logit_squeeze, **options)
        check_range(self.name, 0.0, 1.0, smoothing=smoothing)
        check_range(self.name, pairing_ratio=pairing_ratio, mixup_alpha=mixup_alpha)
        self.smoothing, self.pairing_ratio, self.mixup_alpha = smoothing, pairing_ratio, mixup_alpha

    def mixup(self, x: torch.Tensor, y: torch.Tensor):
        """(λ·x + (1 − λ)·x[π], y[π], λ) with λ ≥ 1/2 and π a random permutation of the batch."""
        if self.mixup_alpha == 0:
            return x, y, 1.0
        weight = float(torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample())
        weight = max(weight, 1 - weight)
        pairing = torch.randperm(len(x), device=x.device)
        return weight * x + (1 - weight) * x[pairing], y[pairing], weight

    def objective(self, model, x, y, attack_model):
        x, y_other, weight = self.mixup(x, y)
        x_adv = self.adversarial_examples(attack_model, x, y)
        logits_natural = forward_logits(model, x)
        logits_adv = forward_logits(model, x_adv)
        loss, adversarial, pairing, coefficient = lrm_loss(logits_natural, logits_adv, y, y_other, weight,
                                                           self.smoothing, self.pairing_ratio)
        metrics = {"adversarial_loss": adversarial.detach(), "pairing_loss": pairing.detach(),
                   "pairing_coefficient": coefficient, "clean_acc": accuracy(logits_natural, y),
                   "adv_acc": accuracy(logits_adv, y)}
        return Objective(loss, metrics, (logits_natural, logits_adv))
