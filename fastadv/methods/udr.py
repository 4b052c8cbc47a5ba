"""UDR: unified distributional robustness (seed 003 ch. 5, METHODS.md section 5).

Each method trains on ``mean g_θ(x^a, x, y)`` where x^a comes from UDR's soft-ball attack
(:class:`fastadv.attacks.UDRAttack`) with the method's current λ, and λ is updated by the seed's
Eq. 19, ``λ ← max(0, λ − η_λ(ε − s))``, s the cost's statistic (:func:`fastadv.ops.soft_cost`:
the mean |x^a − x| per pixel for the ``pixel`` cost, the L∞ soft cost ĉ∞ for ``l2`` and ``linf``):

- ``udr_pgd``:    g = CE(h(x), y) + β·CE(h(x'), y), the attack ascends CE(h(x'), y);
- ``udr_trades``: g = CE(h(x), y) + β·KL(p(x) ‖ p(x')), TRADES' own term (the seed's
  ``D_KL(h(x'), h(x))`` is the notation its Eq. 6 uses for TRADES), the attack ascends it;
- ``udr_mart``:   g = BCE(h(x), y) + β·(1 − h_y(x))·KL(p(x) ‖ p(x')), BCE on the natural batch as
  the seed writes it; the attack ascends KL + BCE(h(x), y) (the seed's footnote), whose BCE term
  does not depend on x', so it is the KL ascent of UDR-TRADES.

With the ``pixel`` cost and η·λ/τ = 1 the attack's step is PGD's projected step, so that TRADES
and MART are UDR-TRADES' and UDR-MART's special cases (Theorem 1).

Resolutions taken in fastadv (METHODS.md section 5 lists them):

- λ starts at 1 and η_λ = 0.02: the seed gives neither; these are the defaults of the authors'
  public code (``--lamda_init 1.0``, ``--lamda_lr 2e-2`` of Unified-Distributional-Robustness's
  train_cifar10_udr.py). τ = 2η (seed 003 App. E).
- The cost defaults to ``pixel`` for an L∞ threat (the authors' code, which produced the seed's
  tables) and ``l2`` for an L2 one (``--cost auto``).
- λ is updated every ``period`` batches (10, the authors' code) with the mean of those batches'
  statistics, and clamped at 0 (λ ≥ 0 in the seed's Eq. 14). Under DDP each batch's statistic is
  averaged over the ranks (one all-reduce on the device), so every rank holds the same λ.
- λ lives on the device as a float64 tensor: the update reads nothing back; the attack reads it
  once per batch (the fused step takes λ as a float). It is the method's state with the
  statistics gathered since the last update, saved in the checkpoints, and logged per epoch
  (``train_lambda``, the epoch's mean of the λ each attack used) with the statistic
  (``train_soft_cost``); like every method trained on PGD examples, the share of the examples
  outside the ε-ball (``train_outside``) and their mean distance in the run's norm
  (``train_distance``) are logged too.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .. import _validate as check
from ..attacks import UDRAttack
from ..ops import logits as L
from ..ops.pgd import COSTS
from ..ops.pgd import unchecked as pgd_ops
from .base import Attacked, NaturalAndAdversarialMethod, perturbation_metrics

__all__ = ["UDRPGD", "UDRTRADES", "UDRMART", "update_lambda"]


def update_lambda(lam: torch.Tensor, lam_lr: float, eps: float, statistic: torch.Tensor) -> torch.Tensor:
    """Seed 003 Eq. 19 with λ ≥ 0: ``max(0, λ − η_λ(ε − s))``, on the device."""
    return (lam - lam_lr * (eps - statistic.double())).clamp_min(0.0)


def global_mean(value: torch.Tensor) -> torch.Tensor:
    """``value`` averaged over the ranks of a distributed run (each rank's mean over its equal share
    of the global batch, so the global batch's mean), a collective on the device; itself otherwise."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    total = value.clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def udr_kl(logits_natural: torch.Tensor, logits_adv: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``KL(p(x) ‖ p(x'))``: UDR's divergence, TRADES' own (the fused trades_kl)."""
    return L.unchecked.trades_kl(logits_natural, logits_adv, reduction)


class UDRMethod(NaturalAndAdversarialMethod):
    """A UDR method: the soft-ball attack with the method's λ, then λ's update (Eq. 19)."""

    option_help = {
        "lam_init": "UDR's λ at the start of training (the authors' code: 1.0)",
        "lam_lr": "η_λ, the step of λ's update (the authors' code: 0.02)",
        "lam_period": "batches between λ's updates, each on the mean of their statistics (the authors' code: 10)",
        "tau_over_eta": "τ of the soft cost outside the ε-ball, in units of the step η = alpha (the seed: τ = 2η)",
        "cost": "the soft cost: pixel, l2, linf (METHODS.md section 5), or auto (pixel for linf, l2 for l2)",
    }

    def __init__(self, *, lam_init: float = 1.0, lam_lr: float = 0.02, lam_period: int = 10,
                 tau_over_eta: float = 2.0, cost: str = "auto", **options):
        super().__init__(**options)
        self.lam_init = check.number(self.name, "lam_init", lam_init, low=0.0)
        self.lam_lr = check.number(self.name, "lam_lr", lam_lr, low=0.0)
        if self.alpha <= 0:
            raise ValueError(f"{self.name}: alpha must be > 0 (the step η of UDR's attack), got {self.alpha}")
        self.tau_over_eta = check.number(self.name, "tau_over_eta", tau_over_eta, low=0.0, low_open=True)
        for name in ("lam_init", "lam_lr", "tau_over_eta"):
            if getattr(self, name) == float("inf"):
                raise ValueError(f"{self.name}: {name} must be finite, got inf")
        self.lam_period = check.integer(self.name, "lam_period", lam_period, low=1)
        cost = check.choice(self.name, "cost", cost, COSTS + ("auto",))
        self.cost = {"linf": "pixel", "l2": "l2"}[self.norm] if cost == "auto" else cost
        self._lam = torch.tensor(self.lam_init, dtype=torch.float64)
        self._statistics = torch.zeros((), dtype=torch.float64)  # their sum since λ's last update
        self._batches = 0  # since λ's last update

    @property
    def tau(self) -> float:
        """τ = tau_over_eta · η."""
        return self.tau_over_eta * self.alpha

    @property
    def lam(self) -> torch.Tensor:
        """The current λ (a float64 tensor, on the device of the last batch)."""
        return self._lam

    def attack(self, model, x, y):
        """UDR's soft-ball examples with the current λ, then λ's update when ``lam_period``
        batches have passed; the metrics are the examples' distance, the λ they were crafted
        with and the batch's statistic."""
        lam = self._lam.to(x.device)
        attack = UDRAttack(model, eps=self.eps, alpha=self.alpha, steps=self.steps, lam=lam, tau=self.tau,
                        cost=self.cost, loss=self.attack_loss, amp_dtype=self.attack_dtype)
        x_adv = attack(x, y)
        with torch.no_grad():
            # Under DDP every rank takes the global batch's mean, so that λ stays one value.
            statistic = global_mean(pgd_ops.soft_cost(x_adv, x, self.eps, self.tau, self.cost).double().mean())
            self._statistics = self._statistics.to(x.device) + statistic
            self._batches += 1
            self._lam = lam
            if self._batches == self.lam_period:
                self._lam = update_lambda(lam, self.lam_lr, self.eps, self._statistics / self._batches)
                self._statistics, self._batches = torch.zeros_like(self._statistics), 0
        metrics = {**perturbation_metrics(x_adv, x, self.eps, self.norm), "lambda": lam, "soft_cost": statistic}
        return Attacked(x_adv, metrics)

    def natural_term(self, logits_natural, y) -> torch.Tensor:
        """The natural term of ``natural + β·robust``: CE(h(x), y) (UDR-PGD, UDR-TRADES)."""
        return F.cross_entropy(logits_natural, y)

    @abstractmethod
    def robust_term(self, logits_natural, logits_adv, y) -> torch.Tensor:
        """The term β weighs in ``natural + β·robust``."""

    def loss_terms(self, logits_natural, logits_adv, y):
        natural = self.natural_term(logits_natural, y)
        robust = self.robust_term(logits_natural, logits_adv, y)
        return natural + self.beta * robust, {"natural_loss": natural, "robust_loss": robust}

    def state_dict(self) -> dict:
        return {"lambda": self._lam.detach().cpu(), "statistics": self._statistics.detach().cpu(),
                "batches": torch.tensor(self._batches)}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"lambda", "statistics", "batches"}:
            raise ValueError(f"{self.name}: expected the method state lambda, statistics and batches, "
                             f"got {sorted(state)}")
        for name in ("lambda", "statistics", "batches"):
            if not isinstance(state[name], torch.Tensor) or state[name].numel() != 1:
                raise ValueError(f"{self.name}: the method state {name} must be a one-element tensor")
        self._lam = state["lambda"].detach().to(torch.float64).reshape(())
        self._statistics = state["statistics"].detach().to(torch.float64).reshape(())
        self._batches = int(state["batches"])


class UDRPGD(UDRMethod):
    """UDR-PGD: ``CE(h(x), y) + β·CE(h(x'), y)`` with x' from UDR's soft-ball attack on CE.

    β = 1 (seed 003 ch. 5 trains MNIST with β = 1 for every method and gives no other β for
    UDR-PGD)."""

    name = "udr_pgd"
    attack_loss = "ce"
    default_beta: ClassVar[float] = 1.0
    option_help = {"beta": "weight β of CE(h(x'), y)"}

    def robust_term(self, logits_natural, logits_adv, y):
        return F.cross_entropy(logits_adv, y)


class UDRTRADES(UDRMethod):
    """UDR-TRADES: ``CE(h(x), y) + β·KL(p(x) ‖ p(x'))``, the attack ascending KL(p(x) ‖ p(x')):
    TRADES' loss on UDR's examples.

    β = 6 (seed 003: "β = 6 for TRADES/UDR-TRADES" on CIFAR; TRADES' default here)."""

    name = "udr_trades"
    attack_loss = "kl"
    default_beta: ClassVar[float] = 6.0
    option_help = {"beta": "weight β of KL(p(x) ‖ p(x'))"}

    def robust_term(self, logits_natural, logits_adv, y):
        return udr_kl(logits_natural, logits_adv)


class UDRMART(UDRMethod):
    """UDR-MART: ``BCE(h(x), y) + β·(1 − h_y(x))·KL(p(x) ‖ p(x'))``, the attack ascending
    KL(p(x) ‖ p(x')) (+ BCE(h(x), y), constant in x').

    β = 5 (seed 003: "β = 5 for MART/UDR-MART" on CIFAR; MART's default here). The weight
    (1 − h_y(x)) is not detached, as in MART."""

    name = "udr_mart"
    attack_loss = "kl"
    default_beta: ClassVar[float] = 5.0
    option_help = {"beta": "weight β of (1 − h_y(x))·KL(p(x) ‖ p(x'))"}

    def natural_term(self, logits_natural, y):
        return L.unchecked.boosted_cross_entropy(logits_natural, y).mean()  # labels read by the attack

    def robust_term(self, logits_natural, logits_adv, y):
        weight = 1.0 - torch.softmax(logits_natural, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
        return (weight * udr_kl(logits_natural, logits_adv, reduction="none")).mean()
