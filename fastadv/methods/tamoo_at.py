"""TA-MOO-AT: ADV-EN's loss on TA-MOO examples (seed 003 ch. 4, App. D.2), METHODS.md sections 3 and 4."""
from __future__ import annotations

from .. import _validate as check
from ..attacks.multi_objective import TAMOO_LAMBDA, EnsembleTasks, MultiObjectivePGD
from ..ops.simplex import SOLVERS
from .base import Attacked, as_ensemble, perturbation_metrics
from .adv_en import ADVEN


class TAMOOAT(ADVEN):
    """``CE(f^en(x), y) + CE(f^en(x'), y)`` with x' = TA-MOO on the ensemble's members (ENS tasks,
    CE loss): the training attack of ADV-EN replaced by the multi-objective one, which looks for
    one x' that fools every member (seed 003 App. D.2: k = 10 steps, ε = 8/255, η = 2/255; λ = 100
    and the softmax-gd solver of the attack chapter). The ensemble is trained as one network on its
    combined output with ADV-EN's loss. The attack is L∞ only."""

    name = "tamoo_at"
    # its step has not been checked as one captured graph; --cuda-graphs graphs its attack
    # (MultiObjectivePGD(graph=...)) alone
    step_graph = False
    option_help = {"lam": "λ of TA-MOO's task-oriented regulariser (seed 003: 100)",
                   "solver": "how the attack finds its task weights: softmax-gd (the seed's), pgd, apgd or exact2 (2 members)"}

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, lam: float = TAMOO_LAMBDA,
                 solver: str = "softmax-gd", norm: str = "linf", attack_dtype: str | None = None, *,
                 logit_squeeze: float = 0.0):
        super().__init__(eps, alpha, steps, norm, attack_dtype, logit_squeeze=logit_squeeze)
        if self.norm != "linf":
            raise ValueError(f"{self.name}: norm must be 'linf' (TA-MOO's attack is L-inf), got {norm!r}")
        self.lam = check.number(self.name, "lam", lam, low=0)
        self.solver = check.choice(self.name, "solver", solver, SOLVERS)

    def attack(self, model, x, y):
        ensemble = as_ensemble(self.name, model)
        attack = MultiObjectivePGD(EnsembleTasks(ensemble), weighting="tamoo", loss="ce", eps=self.eps,
                                   alpha=self.alpha, steps=self.steps, solver=self.solver, lam=self.lam,
                                   amp_dtype=self.attack_dtype, graph=self.attack_graph)
        x_adv = attack(x, y)
        return Attacked(x_adv, perturbation_metrics(x_adv, x, self.eps, self.norm))
