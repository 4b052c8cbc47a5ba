"""LTD, low temperature distillation, METHODS.md section 2, seed 004 §4.2."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import _validate as check
from ..ops import logits as L
from .base import NaturalAndAdversarialMethod, forward_logits


def ltd_loss(logits_natural, logits_adv, soft_labels, beta):
    """(loss, mean CE(z(x), p^t_T), mean KL(p(x) ‖ p(x'))) with loss = CE + λ·KL (seed 004 Eq. 28)."""
    natural = L.soft_cross_entropy(logits_natural, soft_labels).mean()
    robust = L.trades_kl(logits_natural, logits_adv, reduction="mean")
    return natural + beta * robust, natural, robust


class LTD(NaturalAndAdversarialMethod):
    """``CE(z(x), p^t_T) + λ·KL(p(x) ‖ p(x'))`` with ``p^t_T = softmax(z_teacher(x) / T)``
    (seed 004 Eq. 28): TRADES with the one-hot labels of its natural term replaced by a teacher's
    soft labels at temperature T; the student stays at temperature 1 in both terms (§4.2).

    Defaults: T = 5 (``temperature``, seed 004 §5.3.2's best on CIFAR-10 with WRN-34-10) and
    λ = 6 (``beta``, §4.2). ``teacher`` is a model trained with plain cross-entropy on natural
    images (§4.2; the trainer loads it from a run folder with :func:`fastadv.runs.load_teacher`); it stays in eval mode, without
    gradients, and is not part of the student's state (not in its checkpoints).

    - The attack is TRADES': PGD on KL(p(x) ‖ p(x')) from x + 0.001·N(0, I), as METHODS.md
      fixes it (seed 004 follows "the framework of TRADES"; its phrase "crafted using the target
      model's information and the original label y" is not read as a label-based attack).
    - BatchNorm "nat-adv" (seed 004 §5.3.1): the natural batch goes through the model in
      training mode first, then the adversarial one.
    - Soft labels are computed on the fly, one teacher forward per batch (§4.2 allows "in
      advance or on-fly"): the teacher sees the very augmented batch the student sees, which a
      per-epoch cache of labels for un-augmented images would not give.
    """

    name = "ltd"
    step_graph = True
    attack_loss = "kl"
    attack_init = "normal"
    default_beta = 6.0
    option_help = {
        "beta": "weight λ of the KL term",
        "teacher": "a model trained with plain cross-entropy on natural images, whose soft labels the student fits",
        "temperature": "temperature T of the teacher's soft labels",
    }

    def __init__(self, teacher: nn.Module, *, temperature: float = 5.0, **options):
        super().__init__(**options)
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"{self.name}: teacher must be a torch.nn.Module (load a run with "
                            f"fastadv.runs.load_teacher), got {type(teacher).__name__}")
        self.temperature = check.number(self.name, "temperature", temperature, low=0, low_open=True)
        self._teacher = teacher.requires_grad_(False).eval()

    @torch.no_grad()
    def targets(self, x, y):
        """The teacher's soft labels ``softmax(z_teacher(x) / T)``."""
        return F.softmax(forward_logits(self._teacher, x) / self.temperature, dim=1)

    def loss_terms(self, logits_natural, logits_adv, soft_labels):
        loss, natural, robust = ltd_loss(logits_natural, logits_adv, soft_labels, self.beta)
        return loss, {"natural_loss": natural, "robust_loss": robust}
