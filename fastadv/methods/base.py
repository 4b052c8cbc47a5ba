"""The method protocol: a training method turns a batch into a loss.

A method is called as ``loss, metrics = method(model, x, y)`` with the model in training mode.
It crafts its own adversarial examples (its attack is part of its definition), returns the
scalar loss to minimise and a dict of detached scalar tensors to log (kept as tensors so that
logging never forces a device synchronisation inside the step).

``attack_model`` is the model the attack differentiates through; the trainer passes the
module inside DistributedDataParallel there, so that input-gradient passes do not touch
DDP's gradient synchronisation.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..attacks import PGD


class Method:
    """Base class of the training methods (see :mod:`fastadv.methods`)."""

    name: ClassVar[str] = ""
    #: whether the method crafts adversarial examples (the trainer reports their accuracy)
    adversarial: ClassVar[bool] = True

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 attack_model: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise TypeError(f"{type(self).__name__} must define __call__")

    def hyperparameters(self) -> dict:
        """The method's settings, as written to config.json."""
        return {key: str(value) if isinstance(value, torch.dtype) else value
                for key, value in vars(self).items() if not key.startswith("_")}

    def state_dict(self) -> dict:
        """State carried across batches (e.g. moving averages), saved in checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{self.name}: unexpected method state {sorted(state)}")


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=1) == y).float().mean().detach()


def check_positive(method: str, **values) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
            raise ValueError(f"{method}: {name} must be a number >= 0, got {value!r}")


ATTACK_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def attack_dtype_of(method: str, name: str | None):
    """The autocast dtype of a method's attack ("bfloat16" makes the attack's forward and
    backward passes run in bf16; the update and the training loss stay in float32)."""
    if name is None:
        return None
    if name not in ATTACK_DTYPES:
        raise ValueError(f"{method}: attack_dtype must be one of {sorted(ATTACK_DTYPES)} or None, got {name!r}")
    return ATTACK_DTYPES[name]


class AdversarialMethod(Method):
    """A method trained on PGD examples of its own attack loss and start (``attack_loss``,
    ``attack_init``); the attack's ε, α, steps and norm are the method's first arguments."""

    attack_loss: ClassVar[str] = "ce"
    attack_init: ClassVar[str] = "uniform"

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, norm: str = "linf",
                 attack_dtype: str | None = None):
        check_positive(self.name, eps=eps, alpha=alpha, steps=steps)
        self.eps, self.alpha, self.steps, self.norm = eps, alpha, steps, norm
        self.attack_dtype = attack_dtype_of(self.name, attack_dtype)

    def adversarial_examples(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        attack = PGD(model, eps=self.eps, alpha=self.alpha, steps=self.steps, norm=self.norm, loss=self.attack_loss,
                     init=self.attack_init, amp_dtype=self.attack_dtype)
        return attack(x, y)


class NaturalAndAdversarialMethod(AdversarialMethod):
    """A method whose loss needs the logits of both the natural and the adversarial batch,
    weighted by ``beta`` (TRADES, MART, ...). Both batches go through the model in training
    mode, natural first, as TRADES' and MART's code do; subclasses define :meth:`loss_terms`."""

    default_beta: ClassVar[float] = 1.0

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, beta: float | None = None,
                 norm: str = "linf", attack_dtype: str | None = None):
        super().__init__(eps, alpha, steps, norm, attack_dtype)
        beta = self.default_beta if beta is None else beta
        check_positive(self.name, beta=beta)
        self.beta = beta

    def loss_terms(self, logits_natural, logits_adv, y) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the loss, its named parts for logging)."""
        raise TypeError(f"{type(self).__name__} must define loss_terms")

    def __call__(self, model, x, y, *, attack_model=None):
        x_adv = self.adversarial_examples(attack_model or model, x, y)
        logits_natural = model(x)
        logits_adv = model(x_adv)
        loss, parts = self.loss_terms(logits_natural, logits_adv, y)
        metrics = {"loss": loss.detach(), **{name: value.detach() for name, value in parts.items()},
                   "clean_acc": accuracy(logits_natural, y), "adv_acc": accuracy(logits_adv, y)}
        return loss, metrics
