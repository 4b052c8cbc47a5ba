"""LTD, low temperature distillation, METHODS.md section 2, seed 004 §4.2."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import logits as L
from .base import NaturalAndAdversarialMethod, check_range, forward_logits


def ltd_loss(logits_natural, logits_adv, soft_labels, beta):
    """(loss, mean CE(z(x), p^t_T), mean KL(p(x) ‖ p(x'))) with loss = CE + λ·KL (seed 004 Eq. 28)."""
    natural = L.soft_cross_entropy(logits_natural, soft_labels).mean()
    robust = L.trades_kl(logits_natural, logits_adv, reduction="mean")
    return natural + beta * robust, natural, robust


def load_teacher(path, info, device=None) -> nn.Module:
    """The model of a fastadv run folder (its best.pt, else its checkpoint.pt) or checkpoint file,
    in eval mode, without gradients, on ``device``; a ValueError naming ``teacher`` when it does
    not classify the classes of ``info`` (a :class:`fastadv.data.DatasetInfo`) or does not take
    its input shape."""
    from ..evaluate import load_model

    try:
        model, _, teacher_info, checkpoint = load_model(path, device)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"teacher: {error}") from None
    except ValueError as error:
        raise ValueError(f"teacher: {error}") from None
    if teacher_info.num_classes != info.num_classes:
        raise ValueError(f"teacher: {checkpoint} classifies {teacher_info.num_classes} classes, the dataset "
                         f"{info.name} has {info.num_classes}")
    if tuple(teacher_info.input_shape) != tuple(info.input_shape):
        raise ValueError(f"teacher: {checkpoint} takes inputs of shape {tuple(teacher_info.input_shape)}, the "
                         f"dataset {info.name} has {tuple(info.input_shape)}")
    return model.requires_grad_(False).eval()


class LTD(NaturalAndAdversarialMethod):
    """``CE(z(x), p^t_T) + λ·KL(p(x) ‖ p(x'))`` with ``p^t_T = softmax(z_teacher(x) / T)``
    (seed 004 Eq. 28): TRADES with the one-hot labels of its natural term replaced by a teacher's
    soft labels at temperature T; the student stays at temperature 1 in both terms (§4.2).

    Defaults: T = 5 (``temperature``, seed 004 §5.3.2's best on CIFAR-10 with WRN-34-10) and
    λ = 6 (``beta``, §4.2). ``teacher`` is a model trained with plain cross-entropy on natural
    images (§4.2; from a run folder with :func:`load_teacher`); it stays in eval mode, without
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
    attack_loss = "kl"
    attack_init = "normal"
    default_beta = 6.0

    def __init__(self, teacher: nn.Module, *, temperature: float = 5.0, **options):
        super().__init__(**options)
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"{self.name}: teacher must be a torch.nn.Module (load a run with "
                            f"fastadv.methods.ltd.load_teacher), got {type(teacher).__name__}")
        check_range(self.name, low_open=True, temperature=temperature)
        self.temperature = temperature
        self._teacher = teacher.requires_grad_(False).eval()

    @torch.no_grad()
    def targets(self, x, y):
        """The teacher's soft labels ``softmax(z_teacher(x) / T)``."""
        return F.softmax(forward_logits(self._teacher, x) / self.temperature, dim=1)

    def loss_terms(self, logits_natural, logits_adv, soft_labels):
        loss, natural, robust = ltd_loss(logits_natural, logits_adv, soft_labels, self.beta)
        return loss, {"natural_loss": natural, "robust_loss": robust}
