"""What the representation methods of seed 003 ch. 3 (ADR, ASCL; METHODS.md section 2) share:
a loss on the features f(x) (the penultimate layer, or the layer the method names) and the
logits h(x) of both the natural and the adversarial batch, x' = PGD-ce from a uniform start (the method's ε, α and steps, as PGD-AT)."""
from __future__ import annotations

import functools
from abc import abstractmethod
from typing import NamedTuple

import torch
from torch import nn

from .base import AttackThenLoss, Objective, accuracy


class Representation(NamedTuple):
    """A batch's features f(x) [B, D] (the penultimate layer unless the method says another) and
    logits h(x) [B, C]."""

    features: torch.Tensor
    logits: torch.Tensor


def _float32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def representation(model: nn.Module, x: torch.Tensor, layer: str = "penultimate") -> Representation:
    """f(x) at ``layer`` (fastadv.models.FEATURE_LAYERS) and h(x) from one forward pass
    (``model.forward_with_features``), in float32 when autocast made them half precision. Under
    DistributedDataParallel the pass goes through DDP's own forward (which prepares its gradient
    synchronisation) with the wrapped module's forward set to ``forward_with_features`` for that
    one call."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        inner = model.module
        inner.forward = functools.partial(inner.forward_with_features, layer=layer)
        try:
            features, logits = model(x)
        finally:
            del inner.forward
    else:
        features, logits = model.forward_with_features(x, layer)
    return Representation(_float32(features), _float32(logits))


class RepresentationMethod(AttackThenLoss):
    """A method whose loss needs f and h of the natural and the adversarial batch: both go
    through the model in training mode, natural first, as TRADES' code does. Its attack is
    apart from its loss, so given an ensemble it trains the members by seed 000's protocol
    (``trains_members``). Subclasses define :meth:`loss_terms`."""

    attack_loss = "ce"
    attack_init = "uniform"
    @abstractmethod
    def loss_terms(self, model: nn.Module, natural: Representation, adversarial: Representation,
                   y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the loss, its named parts for logging) for ``model``'s representations."""

    def feature_layer(self, model: nn.Module) -> str:
        """The layer whose features the loss takes (fastadv.models.FEATURE_LAYERS): the penultimate."""
        return "penultimate"

    def loss(self, model, x, x_adv, y):
        layer = self.feature_layer(model)
        natural = representation(model, x, layer)
        adversarial = representation(model, x_adv, layer)
        loss, parts = self.loss_terms(model, natural, adversarial, y)
        metrics = {**{name: value.detach() for name, value in parts.items()},
                   "clean_acc": accuracy(natural.logits, y), "adv_acc": accuracy(adversarial.logits, y)}
        return Objective(loss, metrics, (natural.logits, adversarial.logits))
