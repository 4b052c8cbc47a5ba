"""The method protocol: a training method turns a batch into a loss.

A method is called as ``loss, metrics = method(model, x, y)`` with the model in training mode.
It crafts its own adversarial examples (its attack is part of its definition), returns the
scalar loss to minimise and a dict of detached scalar tensors to log (kept as tensors so that
logging never forces a device synchronisation inside the step).

A method defines :meth:`Method.objective`: its loss, its metrics and the logits the loss is
computed from. ``__call__`` adds logit squeezing (seed 001 §3.1), an option of every method:
``loss + logit_squeeze · Σ_z mean_i ‖z_i‖²`` summed over every batch of logits the loss uses
(the adversarial logits, and the natural ones where the method computes them), which is seed
001 Eq. 11's regulariser ``β(‖f(x)‖² + ‖f(x')‖²)`` for a method trained on x and x', and
Kannan et al.'s clean logit squeezing for a method trained on x alone.

``attack_model`` is the model the attack differentiates through; the trainer passes the
module inside DistributedDataParallel there, so that input-gradient passes do not touch
DDP's gradient synchronisation.
"""
from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import nn

from .. import _validate as check
from ..attacks import PGD
from ..ops import logits as L


class Objective(NamedTuple):
    """What a method computes from one batch (see :meth:`Method.objective`)."""

    loss: torch.Tensor
    #: detached scalars to log, besides "loss"
    metrics: dict
    #: every batch of logits the loss is computed from: logit squeezing acts on these
    logits: tuple


class Method:
    """Base class of the training methods (see :mod:`fastadv.methods`)."""

    name: ClassVar[str] = ""
    #: whether the method crafts adversarial examples (the trainer reports their accuracy)
    adversarial: ClassVar[bool] = True
    #: the trainer's default learning rate is the dataset's times this (a method whose paper
    #: trains at a different rate than TRADES' setting, which the dataset defaults follow)
    lr_factor: ClassVar[float] = 1.0
    #: what each option this class's ``__init__`` declares is (the command line's help text)
    option_help: ClassVar[dict[str, str]] = {
        "logit_squeeze": "adds this weight times mean ||z||^2 of every batch of logits the loss uses (seed 001 §3.1)",
    }

    def __init__(self, *, logit_squeeze: float = 0.0):
        self.logit_squeeze = check.number(self.name, "logit_squeeze", logit_squeeze, low=0)

    def objective(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack_model: nn.Module) -> Objective:
        """The method's own loss on the batch, before logit squeezing."""
        raise TypeError(f"{type(self).__name__} must define objective")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 attack_model: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, metrics, logits = self.objective(model, x, y, attack_model or model)
        metrics = dict(metrics)
        if self.logit_squeeze:
            squeeze = sum(L.logit_squeeze(z).mean() for z in logits)
            loss = loss + self.logit_squeeze * squeeze
            metrics["logit_squeeze"] = squeeze.detach()
        return loss, {"loss": loss.detach(), **metrics}

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


def forward_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's logits, in float32 when autocast made them half precision: the losses are
    computed in float32, as autocast itself does for its losses."""
    logits = model(x)
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=1) == y).float().mean().detach()


ATTACK_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class AdversarialMethod(Method):
    """A method trained on PGD examples of its own attack loss and start (``attack_loss``,
    ``attack_init``); the attack's ε, α, steps and norm are the method's first arguments."""

    attack_loss: ClassVar[str] = "ce"
    attack_init: ClassVar[str] = "uniform"
    option_help = {
        "eps": "radius of the training attack's threat model",
        "alpha": "step size of the training attack",
        "steps": "steps of the training attack",
        "norm": "the attack's norm, linf or l2",
        "attack_dtype": "bfloat16 or float16: the attack's forward and backward passes run under autocast in this "
                        "dtype (the update and the training loss stay float32)",
    }

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, norm: str = "linf",
                 attack_dtype: str | None = None, *, logit_squeeze: float = 0.0):
        super().__init__(logit_squeeze=logit_squeeze)
        self.eps = check.number(self.name, "eps", eps, low=0)
        self.alpha = check.number(self.name, "alpha", alpha, low=0)
        self.steps = check.integer(self.name, "steps", steps)
        self.norm = check.choice(self.name, "norm", norm, ("linf", "l2"))
        attack_dtype = check.choice(self.name, "attack_dtype", attack_dtype, ATTACK_DTYPES, allow_none=True)
        self.attack_dtype = None if attack_dtype is None else ATTACK_DTYPES[attack_dtype]

    def attack_options(self) -> dict:
        """Settings of the attack beyond the shared ones (e.g. the margin of margin_ce)."""
        return {}

    def adversarial_examples(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        attack = PGD(model, eps=self.eps, alpha=self.alpha, steps=self.steps, norm=self.norm, loss=self.attack_loss,
                     init=self.attack_init, amp_dtype=self.attack_dtype, **self.attack_options())
        return attack(x, y)


class NaturalAndAdversarialMethod(AdversarialMethod):
    """A method whose loss needs the logits of both the natural and the adversarial batch,
    weighted by ``beta`` (TRADES, MART, ...). Both batches go through the model in training
    mode, natural first, as TRADES' and MART's code do; subclasses define :meth:`loss_terms`."""

    #: the paper's weight of the term ``beta`` weighs (the default when beta is None)
    default_beta: ClassVar[float] = 1.0
    option_help = {"beta": "the method's trade-off weight (METHODS.md section 2)"}

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, beta: float | None = None,
                 norm: str = "linf", attack_dtype: str | None = None, *, logit_squeeze: float = 0.0):
        super().__init__(eps, alpha, steps, norm, attack_dtype, logit_squeeze=logit_squeeze)
        self.beta = check.number(self.name, "beta", self.default_beta if beta is None else beta, low=0)

    def targets(self, x: torch.Tensor, y: torch.Tensor):
        """What :meth:`loss_terms` fits the natural logits to: the labels (LTD: soft labels)."""
        return y

    def loss_terms(self, logits_natural, logits_adv, targets) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the loss, its named parts for logging)."""
        raise TypeError(f"{type(self).__name__} must define loss_terms")

    def objective(self, model, x, y, attack_model):
        x_adv = self.adversarial_examples(attack_model, x, y)
        logits_natural = forward_logits(model, x)
        logits_adv = forward_logits(model, x_adv)
        loss, parts = self.loss_terms(logits_natural, logits_adv, self.targets(x, y))
        metrics = {**{name: value.detach() for name, value in parts.items()},
                   "clean_acc": accuracy(logits_natural, y), "adv_acc": accuracy(logits_adv, y)}
        return Objective(loss, metrics, (logits_natural, logits_adv))
