"""ALS, adversarial logit separation (seed 000, Algorithm 1), METHODS.md section 3."""
from __future__ import annotations

import math

import torch

from .. import _validate as check
from ..ops import logits as L
from .base import as_ensemble
from .trades import TRADES


class SeparationSchedule:
    """Seed 000's λ (§2.3, Fig. 4): a linear warm-up from 0 to ``lam_max`` over the first
    ``warmup`` fraction of the run's steps, then cosine annealing down to ``lam_min`` at the
    last step. ``step()`` advances one step (one reference turn) and returns λ at it:

        W = max(1, round(warmup·T));  λ(k) = lam_max·k/W                                  for k ≤ W
        λ(k) = lam_min + (lam_max − lam_min)·(1 + cos(π·(k − W)/(T − W)))/2              for W < k ≤ T

    (λ(T) = lam_min; steps past T, which a run never takes, stay at lam_min.) The step count is
    the state a checkpoint keeps."""

    def __init__(self, lam_max: float = 1.0, lam_min: float = 0.01, warmup: float = 0.05, total: int = 1):
        self.lam_max, self.lam_min, self.warmup = lam_max, lam_min, warmup
        self.total = total
        self.steps = 0

    def value(self, k: int) -> float:
        warm = max(1, round(self.warmup * self.total))
        if k <= warm:
            return self.lam_max * k / warm
        if k >= self.total:
            return self.lam_min
        progress = (k - warm) / (self.total - warm)
        return self.lam_min + (self.lam_max - self.lam_min) * (1 + math.cos(math.pi * progress)) / 2

    def step(self) -> float:
        self.steps += 1
        return self.value(self.steps)


class ALS(TRADES):
    """Adversarial logit separation (seed 000, Algorithm 1) on TRADES.

    Per batch, each member r in turn is the reference: ``λ ← schedule.step()``; x̃ = TRADES'
    PGD-kl on f_r; every member o takes a step on

        TRADES(f_o; x, x̃, y) + 1[o ≠ r]·λ·cos_m(sg(z_r(x̃)), z_o(x̃)),
        cos_m(a, b) = ⟨a⊙m, b⊙m⟩ / (‖a⊙m‖·‖b⊙m‖),  m = 1 − onehot(y),

    averaged over the batch (the cosines are ``masked_gram`` of the members' adversarial logits).
    The members take their steps as one optimiser step per reference turn on Σ_o L_o: equal to
    seed 000's per-member gradient steps because the members' parameters are disjoint and the
    reference logits z_r(x̃) are computed once, at the start of the turn, and frozen (sg), so
    member o's gradient is that of L_o alone (tests/methods compare it with a literal loop of
    per-member optimisers). λ follows :class:`SeparationSchedule` over the run's reference turns
    (lam_max = 1, lam_min = 0.01, §3; warm-up 5% of the steps, METHODS.md); its step count is
    the method's state, kept in checkpoints, and λ is logged (``train_lambda``, the epoch's mean).
    β = 6 (TRADES' default, seed 000 §3). With lam_max = lam_min = 0 it is seed 000's baseline,
    ``trades`` trained on the ensemble by the same protocol.
    """

    name = "als"
    # λ follows a schedule over the run, a Python float read per batch
    step_graph = False
    ensemble = True
    min_members = 2
    max_members = L.MAX_MEMBERS  # masked_gram's
    ensemble_combine = "logit"
    trains_members = False
    option_help = {"lam_max": "λ's peak, reached at the end of the warm-up (seed 000: 1)",
                   "lam_min": "λ at the end of the cosine annealing (seed 000: 0.01)",
                   "warmup": "fraction of the run's reference turns over which λ rises linearly from 0 to lam_max"}

    def __init__(self, *, lam_max: float = 1.0, lam_min: float = 0.01, warmup: float = 0.05, **options):
        super().__init__(**options)
        self.lam_max = check.number(self.name, "lam_max", lam_max, low=0)
        self.lam_min = check.number(self.name, "lam_min", lam_min, low=0, high=self.lam_max)
        self.warmup = check.number(self.name, "warmup", warmup, low=0, high=1)
        self._schedule = SeparationSchedule(self.lam_max, self.lam_min, self.warmup)

    def prepare(self, model, batches):
        self._schedule.total = max(1, batches * len(as_ensemble(self.name, model).members))

    @property
    def schedule(self) -> SeparationSchedule:
        return self._schedule

    def turns(self, model, x, y, *, attack_model=None):
        ensemble = as_ensemble(self.name, attack_model if attack_model is not None else model)
        yield from self.reference_turns(ensemble, x, y, extra=self.separation)

    def separation(self, r: int, adversarial: torch.Tensor, y: torch.Tensor):
        """(λ·Σ_{o≠r} mean_b cos_m(sg(z_r), z_o), metrics) for reference r, ``adversarial`` the
        members' logits on x̃, [M, B, C]."""
        lam = self._schedule.step()
        frozen = torch.cat([adversarial[:r], adversarial[r:r + 1].detach(), adversarial[r + 1:]])
        gram = L.unchecked.masked_gram(frozen, y, True)
        cosines = gram[:, r].sum(-1) - gram[:, r, r]  # Σ_{o≠r} cos_m(z_r, z_o), per sample
        others = adversarial.shape[0] - 1
        term = lam * cosines.mean()
        metrics = {"lambda": torch.tensor(lam, dtype=torch.float64, device=y.device),
                   "masked_cosine": (cosines.mean() / others).detach()}
        return term, metrics

    def state_dict(self):
        return {"schedule_steps": self._schedule.steps, "schedule_total": self._schedule.total}

    def load_state_dict(self, state):
        expected = {"schedule_steps", "schedule_total"}
        if set(state) != expected:
            raise ValueError(f"{self.name}: method state must hold {sorted(expected)}, got {sorted(state)}")
        if state["schedule_total"] != self._schedule.total:
            raise ValueError(f"{self.name}: the checkpoint's λ schedule spans {state['schedule_total']} steps, this "
                             f"run {self._schedule.total}; resume with the same epochs, batch size and members")
        self._schedule.steps = int(state["schedule_steps"])
