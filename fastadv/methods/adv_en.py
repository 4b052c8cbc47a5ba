"""ADV-EN: PGD-AT of an ensemble seen as one model (seed 003 ch. 4's baseline), METHODS.md section 3."""
from __future__ import annotations

from .base import as_ensemble
from .pgd_at import PGDAT


class ADVEN(PGDAT):
    """``CE(f^en(x'), y)`` with x' = PGD-ce on the ensemble's output f^en, the log of its members'
    mean probability (seed 003 ch. 4: ``f^en = (1/N) Σ_n f^n``): PGD-AT with the ensemble as the
    model, attacked white-box and trained as one network."""

    name = "adv_en"
    ensemble = True
    min_members = 2
    ensemble_combine = "prob"
    trains_members = False

    def objective(self, model, x, y, attack_model):
        as_ensemble(self.name, attack_model)
        return super().objective(model, x, y, attack_model)
