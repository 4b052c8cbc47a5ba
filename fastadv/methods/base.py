"""The method protocol: a training method turns a batch into a loss.

A method is called as ``loss, metrics = method(model, x, y)`` with the model in training mode.
It crafts its own adversarial examples (its attack is part of its definition), returns the
scalar loss to minimise and a dict of detached scalar tensors to log (kept as tensors so that
logging never forces a device synchronisation inside the step).

What a method implements, in one of two shapes:

- :class:`AttackThenLoss` (most methods): its attack (:meth:`AdversarialMethod.attack`: PGD of
  the method's ``attack_loss`` from its ``attack_init``, unless it defines another) and its loss
  on the batch and the attack's examples (:meth:`AttackThenLoss.loss`). Its ``objective`` is the
  two in turn, the attack's metrics (the examples' distance; UDR's λ) logged with the loss's.
  Such a method also trains the members of an ensemble (seed 000's protocol, below).
- :class:`Method` (``standard``, ``label_smoothing``, and the methods whose attack is entangled
  with their loss: LRM's mixup, ADP, CCE): :meth:`Method.objective`, the loss, its metrics and
  the logits it is computed from, for one batch.

The hooks a method must define are abstract; the others are extension points with a default:

- :meth:`Method.turns`: several optimiser steps per batch. The trainer takes one optimiser step
  after each ``(loss, metrics)`` the generator yields, before asking for the next, so a later
  turn sees the weights the earlier ones updated (ALS's turns, seed 000's protocol); the
  learning-rate schedule steps once per batch. One step by default.
- :meth:`Method.prepare`, :meth:`Method.state_dict`, :meth:`Method.load_state_dict`: state the
  method carries across batches (UDR's λ, ALS's schedule, LMA's moving averages), sized before
  the first batch, saved in every checkpoint, restored on resume.

Logit squeezing (seed 001 §3.1) is an option of every method: ``__call__`` adds
``logit_squeeze · Σ_z mean_i ‖z_i‖²`` summed over every batch of logits the loss uses (the
adversarial logits, and the natural ones where the method computes them), which is seed 001
Eq. 11's regulariser ``β(‖f(x)‖² + ‖f(x')‖²)`` for a method trained on x and x', and Kannan et
al.'s clean logit squeezing for a method trained on x alone.

``attack_model`` is the model the attack differentiates through; the trainer passes the
module inside DistributedDataParallel there, so that input-gradient passes do not touch
DDP's gradient synchronisation.

A class that sets ``name`` registers itself in :data:`REGISTRY` when it is defined; the
trainer, the command line, the tests and the docs read the registry.

Ensembles (METHODS.md section 3): an *ensemble method* (``ensemble = True``: adv_en, adp, als,
cce, tamoo_at) is defined on a :class:`fastadv.ensemble.Ensemble` and takes it as ``model``. An
:class:`AttackThenLoss` method (``trains_members``) trains the members of an ensemble with seed
000's protocol, its Algorithm 1 with λ = 0: per batch each member in turn is the reference r,
the method's attack crafts x̃ on f_r, and every member o takes the method's loss on (x, x̃) on
its own logits, one optimiser step per reference turn on the sum of the members' losses (see
:meth:`AttackThenLoss.reference_turns`). TRADES trained so is seed 000's baseline ("naive
ensemble of three randomly initialized models", §3).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Iterator, NamedTuple

import torch
from torch import nn

from .. import _validate as check
from ..attacks import PGD
from ..ensemble import Ensemble
from ..ops import logits as L


class Objective(NamedTuple):
    """What a method computes from one batch (see :meth:`Method.objective`)."""

    loss: torch.Tensor
    #: detached scalars to log, besides "loss"
    metrics: dict
    #: every batch of logits the loss is computed from, the adversarial ones last: logit
    #: squeezing acts on these
    logits: tuple


class Attacked(NamedTuple):
    """What a method's attack returns (see :meth:`AdversarialMethod.attack`)."""

    #: the adversarial examples
    x_adv: torch.Tensor
    #: detached scalars to log (the examples' distance from x; UDR's λ and statistic)
    metrics: dict


#: every method by its name, filled as the classes are defined (:meth:`Method.__init_subclass__`)
REGISTRY: dict[str, type["Method"]] = {}


class Method(ABC):
    """Base class of the training methods (see :mod:`fastadv.methods`)."""

    #: the method's name (``fastadv train --method NAME``); a class that sets one is registered
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

    #: defined on an ensemble (the trainer builds one: ``default_members`` copies of the model
    #: unless --members or --models say otherwise)
    ensemble: ClassVar[bool] = False
    default_members: ClassVar[int] = 3
    #: the fewest and the most members the method is defined for (None: no limit)
    min_members: ClassVar[int] = 1
    max_members: ClassVar[int | None] = None
    #: how the trained ensemble combines its members' outputs (METHODS.md section 3); for a
    #: single-model method trained on an ensemble, seed 000's averaged logits
    ensemble_combine: ClassVar[str] = "logit"
    #: a single-model method that trains an ensemble's members by seed 000's protocol
    #: (:meth:`AttackThenLoss.reference_turns`; True for those methods unless they say otherwise)
    trains_members: ClassVar[bool] = False
    #: whether a batch's step is a function of the weights, the batch and the device's random
    #: stream alone (no Python state that changes from batch to batch, no host randomness, one
    #: optimiser step on a single model): the trainer's ``--cuda-graphs`` then captures the whole
    #: step, attack to update, in one CUDA graph (fastadv.train.GraphedStep)
    step_graph: ClassVar[bool] = False
    #: why the method's loss couples the samples of a batch with each other ("" where it is a
    #: mean of per-sample terms): under torchrun each rank couples the samples of its own share,
    #: so a step is not the single-process step on the global batch (fastadv.distributed)
    batch_coupled: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name:
            if name in REGISTRY and REGISTRY[name].__qualname__ != cls.__qualname__:
                raise TypeError(f"method name {name!r} of {cls.__qualname__} is taken by {REGISTRY[name].__qualname__}")
            REGISTRY[name] = cls

    def __init__(self, *, logit_squeeze: float = 0.0):
        self.logit_squeeze = check.number(self.name, "logit_squeeze", logit_squeeze, low=0)

    @abstractmethod
    def objective(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack_model: nn.Module) -> Objective:
        """The method's own loss on the batch, before logit squeezing."""

    def prepare(self, model: nn.Module, batches: int) -> None:
        """Called by the trainer once, before the first batch (and before a resumed run loads the
        method's state), with the model and the number of batches the run takes: a method whose
        state follows a schedule over the run (ALS's λ) sizes it here."""

    def squeezed(self, objective: Objective) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, metrics) of an objective: logit squeezing added, the loss logged."""
        loss, metrics, logits = objective
        metrics = dict(metrics)
        if self.logit_squeeze:
            squeeze = sum(L.logit_squeeze(z).mean() for z in logits)
            loss = loss + self.logit_squeeze * squeeze
            metrics["logit_squeeze"] = squeeze.detach()
        return loss, {"loss": loss.detach(), **metrics}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 attack_model: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.squeezed(self.objective(model, x, y, attack_model if attack_model is not None else model))

    def turns(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
              attack_model: nn.Module | None = None) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """The batch's optimiser steps: each item is one step's (loss, metrics). One step on the
        method's loss; a single-model method given an ensemble trains its members by
        :meth:`AttackThenLoss.reference_turns`."""
        attack_model = attack_model if attack_model is not None else model
        if isinstance(attack_model, Ensemble) and not self.ensemble:
            if not self.trains_members:
                raise TypeError(f"{self.name}: cannot train the members of an ensemble (see Method.trains_members)")
            yield from self.reference_turns(attack_model, x, y)
        else:
            yield self(model, x, y, attack_model=attack_model)

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


def as_ensemble(owner: str, model: nn.Module) -> Ensemble:
    """``model`` when it is an :class:`Ensemble`; an ensemble method refuses anything else."""
    if not isinstance(model, Ensemble):
        raise TypeError(f"{owner}: model must be a fastadv.models.Ensemble (an ensemble method; train it with "
                        f"--members N or --models A,B,...), got {type(model).__name__}")
    return model


def forward_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's logits, in float32 when autocast made them half precision: the losses are
    computed in float32, as autocast itself does for its losses."""
    logits = model(x)
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=1) == y).float().mean().detach()


ATTACK_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}

#: relative slack of "outside the ε-ball": a projected point on the sphere may round a hair above ε
OUTSIDE_SLACK = 1e-5


def perturbation_distance(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    """‖x_adv − x‖ per sample [B] (float64), L∞ or L2 over each sample's elements."""
    delta = (x_adv - x).flatten(1).double()
    return delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)


def perturbation_metrics(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> dict[str, torch.Tensor]:
    """What the training attack did, on the device (nothing read): the examples' mean distance from
    x in the threat model's norm (``distance``) and the share of them outside the ε-ball
    (``outside``: 0 for a projected attack, the soft ball of UDR lets them leave)."""
    with torch.no_grad():
        distance = perturbation_distance(x_adv, x, norm)
        return {"distance": distance.mean(), "outside": (distance > eps * (1 + OUTSIDE_SLACK)).double().mean()}


class AdversarialMethod(Method):
    """A method trained on PGD examples of its own attack loss and start (``attack_loss``,
    ``attack_init``); the attack's ε, α, steps and norm are the method's first arguments."""

    attack_loss: ClassVar[str] = "ce"
    attack_init: ClassVar[str] = "uniform"
    #: the training attack's ``graph`` argument (fastadv.attacks.graph): the trainer's
    #: ``--cuda-graphs`` sets "auto"
    attack_graph = False
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

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Attacked:
        """The method's adversarial examples for the batch, crafted on ``model``: PGD of
        ``attack_loss`` from ``attack_init`` with the method's ε, α, steps and norm; the metrics
        are the examples' distance from x (:func:`perturbation_metrics`)."""
        attack = PGD(model, eps=self.eps, alpha=self.alpha, steps=self.steps, norm=self.norm, loss=self.attack_loss,
                     init=self.attack_init, amp_dtype=self.attack_dtype, graph=self.attack_graph,
                     **self.attack_options())
        x_adv = attack(x, y)
        return Attacked(x_adv, perturbation_metrics(x_adv, x, self.eps, self.norm))


class AttackThenLoss(AdversarialMethod):
    """A method whose attack is apart from its loss: ``objective`` is :meth:`attack` on the
    attack model, then :meth:`loss` on its examples, the attack's metrics logged with the
    loss's. Such a method trains the members of an ensemble by seed 000's protocol
    (:meth:`reference_turns`) unless it sets ``trains_members = False``."""

    trains_members = True

    @abstractmethod
    def loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> Objective:
        """The method's loss for ``model`` on the batch x and its adversarial examples ``x_adv``."""

    def objective(self, model, x, y, attack_model):
        attacked = self.attack(attack_model, x, y)
        return with_metrics(self.loss(model, x, attacked.x_adv, y), attacked.metrics)

    def reference_turns(self, ensemble: Ensemble, x: torch.Tensor, y: torch.Tensor,
                        extra=None) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """Seed 000's protocol (Algorithm 1): for each member r in turn, x̃ = the method's attack
        on f_r; every member o takes the method's loss on (x, x̃) with its own logits, plus
        ``extra(r, adversarial_logits, y)`` when given (ALS's separation term; the logits are
        [M, B, C], member order); one item (one optimiser step) per reference on the sum over
        members. Equal to a step per member with its own optimiser: the members' parameters are
        disjoint and x̃ is fixed before the turn's forward passes, so each member's gradient is
        that of its own loss. Metrics are the members' mean, and the reference attack's."""
        members = ensemble.members
        for r, reference in enumerate(members):
            attacked = self.attack(reference, x, y)
            objectives = [self.loss(member, x, attacked.x_adv, y) for member in members]
            steps = [self.squeezed(objective) for objective in objectives]
            loss = sum(step[0] for step in steps)
            metrics = {name: torch.stack([step[1][name] for step in steps]).mean() for name in steps[0][1]}
            metrics.update(attacked.metrics)
            if extra is not None:
                adversarial = torch.stack([objective.logits[-1] for objective in objectives])
                term, extra_metrics = extra(r, adversarial, y)
                loss = loss + term
                metrics.update(extra_metrics)
            metrics["loss"] = loss.detach()
            yield loss, metrics


def with_metrics(objective: Objective, metrics: dict) -> Objective:
    """``objective`` with ``metrics`` (an attack's) logged beside its own."""
    return objective._replace(metrics={**objective.metrics, **metrics})


class NaturalAndAdversarialMethod(AttackThenLoss):
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

    @abstractmethod
    def loss_terms(self, logits_natural, logits_adv, targets) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the loss, its named parts for logging)."""

    def loss(self, model, x, x_adv, y):
        logits_natural = forward_logits(model, x)
        logits_adv = forward_logits(model, x_adv)
        loss, parts = self.loss_terms(logits_natural, logits_adv, self.targets(x, y))
        metrics = {**{name: value.detach() for name, value in parts.items()},
                   "clean_acc": accuracy(logits_natural, y), "adv_acc": accuracy(logits_adv, y)}
        return Objective(loss, metrics, (logits_natural, logits_adv))
