"""Standard (non-adversarial) training: the baseline every robust method is compared with."""
from __future__ import annotations

import torch.nn.functional as F

from .base import Method, Objective, accuracy, forward_logits


class Standard(Method):
    """``CE(z(x), y)`` on clean inputs only; no attack."""

    name = "standard"
    step_graph = True
    adversarial = False

    def objective(self, model, x, y, attack_model):
        logits = forward_logits(model, x)
        return Objective(F.cross_entropy(logits, y), {"clean_acc": accuracy(logits, y)}, (logits,))
