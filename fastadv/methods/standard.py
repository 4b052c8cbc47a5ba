"""Standard (non-adversarial) training: the baseline every robust method is compared with."""
from __future__ import annotations

import torch.nn.functional as F

from .base import Method, accuracy


class Standard(Method):
    """``CE(z(x), y)`` on clean inputs only; no attack."""

    name = "standard"
    adversarial = False

    def __call__(self, model, x, y, *, attack_model=None):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": loss.detach(), "clean_acc": accuracy(logits, y)}
