"""LRM, logit regularization methods (Summers and Dinneen), METHODS.md section 2, seed 001
§4.1 and §5.2."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _validate as check
from ..ops import logits as L
from .base import AdversarialMethod, Objective, accuracy, forward_logits, with_metrics


def lrm_loss(logits_natural, logits_adv, y, y_other, weight, smoothing, ratio):
    """(loss, L_adv, H, c) with loss = L_adv + c·H, the terms of LRM before logit squeezing:

    - ``L_adv = mean CE(z(x'), t)``, t the mixup of the label-smoothed targets of y (weight
      ``weight``, a float or a 0-dim tensor) and ``y_other`` (weight 1 − ``weight``), as the
      per-label sum mixup's code writes;
    - ``H = mean H(sg(p(x)), z(x'))``, the cross-entropy of the distribution p(x) against the
      logits z(x'), differentiated in z(x') only (see :class:`LRM`);
    - ``c = sg(L_adv / (r·H))``, so that L_adv : c·H = r, the pairing term equals L_adv / r in value.
    """
    adversarial = (weight * L.smoothed_cross_entropy(logits_adv, y, smoothing)
                   + (1 - weight) * L.smoothed_cross_entropy(logits_adv, y_other, smoothing)).mean()
    pairing = L.soft_cross_entropy(logits_adv, F.softmax(logits_natural, dim=1).detach()).mean()
    coefficient = (adversarial / (ratio * pairing)).detach()
    return adversarial + coefficient * pairing, adversarial, pairing, coefficient


class LRM(AdversarialMethod):
    """``L_adv + c·H(p(x), z(x')) + β(‖z(x)‖² + ‖z(x')‖²)``, ``c = sg(L_adv / (r·H))``: seed 001
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
      is as likely as its inverse) and makes y the dominant label of every mixed input. λ is
      drawn on the batch's device from torch's generator (saved in checkpoints) and stays a
      tensor: reading it would synchronise with the device at every step.
    - Mixup is a data augmentation of the inputs: it is applied first, and x below is the
      mixed batch; the targets are the mixup of the smoothed targets (label smoothing is
      "a preprocessing step on the labels", §4).
    - The adversarial example x' is PGD-ce from a uniform start (Madry's, seed 001 §2) on the
      mixed input, against the dominant label y: fastadv's attacks take class labels, not the
      soft mixed targets an attack in CleverHans (the seed's library) would receive.
    - p(x) is a constant in H, as in the cross-entropies of TensorFlow 1 that the seed's library
      (CleverHans) is built on: ``tf.losses.softmax_cross_entropy`` and
      ``tf.nn.softmax_cross_entropy_with_logits`` stop the gradient into their labels. The seed
      does not say, and its remark that the pairing has "a mild expanding effect (if the logits
      are very similar)" (§4.1) fits a gradient through p(x) better; but with §5.2's ratio (the
      pairing term is L_adv / r, 8·L_adv at r = 0.125) that gradient, (L_adv / r)·∇log H,
      sharpens p(x) and p(x') together without bound (β holds the logits only near
      L_adv / (2rβ)): on the digits (ε = 0.2) such a run reaches NaN within its first epoch, at
      a tenth of the learning rate too, and with r = 0.95 by its sixth. With p(x) constant, H is
      bounded below by the entropy of p(x) and the run trains (docs/methods.md).
    - c is computed on the batch means (one ratio per batch), and both batches go through the
      model in training mode, natural first, as in the other natural-and-adversarial methods.
    - The ratio: seed 001 §5.2 sets "the ratio between the adversarial training loss and the
      pairing loss", so ``L_adv / (c·H) = r``: r = 0.125 makes the pairing term 8 times L_adv,
      which "focuses the loss on keeping adversarial and original examples similar", and
      r = 0.95 lets the network "focus more on fitting the data"; §4.1's "constant fraction" is
      read in that light.

    ``clean_acc`` and ``adv_acc`` are measured on the mixed batch against its dominant label.
    """

    name = "lrm"
    batch_coupled = "its mixup pairs each sample with another of the batch, by a permutation drawn per rank"
    attack_loss = "ce"
    attack_init = "uniform"
    option_help = {
        "smoothing": "label smoothing s of the adversarial targets (1 - s on y, s/(C - 1) elsewhere)",
        "pairing_ratio": "ratio r of the adversarial loss to the pairing loss (the pairing term is L_adv / r)",
        "mixup_alpha": "mixup's Beta(a, a) parameter, 0 for no mixup",
    }

    def __init__(self, *, smoothing: float = 0.1, pairing_ratio: float = 0.125, mixup_alpha: float = 1.0,
                 logit_squeeze: float = 1e-3, **options):
        super().__init__(logit_squeeze=logit_squeeze, **options)
        self.smoothing = check.number(self.name, "smoothing", smoothing, low=0, high=1)
        self.pairing_ratio = check.number(self.name, "pairing_ratio", pairing_ratio, low=0, low_open=True)
        self.mixup_alpha = check.number(self.name, "mixup_alpha", mixup_alpha, low=0)

    def mixup(self, x: torch.Tensor, y: torch.Tensor):
        """(λ·x + (1 − λ)·x[π], y[π], λ) with λ ≥ 1/2 a 0-dim tensor and π a random permutation
        of the batch; (x, y, 1.0) without mixup."""
        if self.mixup_alpha == 0:
            return x, y, 1.0
        concentration = torch.full((), self.mixup_alpha, dtype=x.dtype, device=x.device)
        # Without validation: Beta's argument check reads the tensor (a synchronisation); alpha
        # was checked once in __init__.
        weight = torch.distributions.Beta(concentration, concentration, validate_args=False).sample()
        weight = torch.maximum(weight, 1 - weight)
        pairing = torch.randperm(len(x), device=x.device)
        return weight * x + (1 - weight) * x[pairing], y[pairing], weight

    def objective(self, model, x, y, attack_model):
        x, y_other, weight = self.mixup(x, y)
        attacked = self.attack(attack_model, x, y)
        logits_natural = forward_logits(model, x)
        logits_adv = forward_logits(model, attacked.x_adv)
        loss, adversarial, pairing, coefficient = lrm_loss(logits_natural, logits_adv, y, y_other, weight,
                                                           self.smoothing, self.pairing_ratio)
        metrics = {"adversarial_loss": adversarial.detach(), "pairing_loss": pairing.detach(),
                   "pairing_coefficient": coefficient, "clean_acc": accuracy(logits_natural, y),
                   "adv_acc": accuracy(logits_adv, y)}
        return with_metrics(Objective(loss, metrics, (logits_natural, logits_adv)), attacked.metrics)
