"""What the representation methods of seed 003 ch. 3 (ADR, ASCL; METHODS.md section 2) share:
a loss on the penultimate features f(x) and the logits h(x) of both the natural and the
adversarial batch, x' = PGD-ce from a uniform start (the method's ε, α and steps, as PGD-AT)."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .base import AdversarialMethod, Objective, accuracy


class Representation(NamedTuple):
    """A batch's penultimate features f(x) [B, D] and logits h(x) [B, C]."""

    features: torch.Tensor
    logits: torch.Tensor


def _float32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def representation(model: nn.Module, x: torch.Tensor) -> Representation:
    """f(x) and h(x) from one forward pass (``model.forward_with_features``), in float32 when
    autocast made them half precision. Under DistributedDataParallel the pass goes through DDP's
    own forward (which prepares its gradient synchronisation) with the wrapped module's forward
    set to ``forward_with_features`` for that one call."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        inner = model.module
        inner.forward = inner.forward_with_features
        try:
            features, logits = model(x)
        finally:
            del inner.forward
    else:
        features, logits = model.forward_with_features(x)
    return Representation(_float32(features), _float32(logits))


class RepresentationMethod(AdversarialMethod):
    """A method whose loss needs f and h of the natural and the adversarial batch: both go
    through the model in training mode, natural first, as TRADES' code does. Its attack is
    apart from its loss, so given an ensemble it trains the members by seed 000's protocol
    (``trains_members``). Subclasses define :meth:`loss_terms`."""

    attack_loss = "ce"
    attack_init = "uniform"
    trains_members = True

    def loss_terms(self, model: nn.Module, natural: Representation, adversarial: Representation,
                   y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the loss, its named parts for logging) for ``model``'s representations."""
        raise TypeError(f"{type(self).__name__} must define loss_terms")

    def objective(self, model, x, y, attack_model):
        return self.objective_given(model, x, self.adversarial_examples(attack_model, x, y), y)

    def objective_given(self, model, x, x_adv, y):
        natural = representation(model, x)
        adversarial = representation(model, x_adv)
        loss, parts = self.loss_terms(model, natural, adversarial, y)
        metrics = {**{name: value.detach() for name, value in parts.items()},
                   "clean_acc": accuracy(natural.logits, y), "adv_acc": accuracy(adversarial.logits, y)}
        return Objective(loss, metrics, (natural.logits, adversarial.logits))
