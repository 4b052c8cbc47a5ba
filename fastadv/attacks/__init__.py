"""Attacks with torchattacks' calling convention: ``x_adv = PGD(model, eps=8/255)(x, y)``.

METHODS.md section 1: FGSM, PGD (L∞ and L2) on the losses ce, kl (TRADES), kl_reverse (UDR), cw and
margin_ce (LMA-AT), with per-sample ε/α, early stop, restarts and an optional autocast dtype.
METHODS.md section 5: UDRAttack, UDR's soft-ball PGD (no projection; λ, τ and the cost c).
METHODS.md section 4: MultiObjectivePGD (TA-MOO, MOO, MinMax, Uniform) over the task sets
EnsembleTasks (ENS), UniversalTasks (UNI) and TransformTasks (EoT).
"""
from .base import Attack
from .losses import LOSSES, carlini_wagner, cross_entropy, kl_from_clean, kl_to_clean, margin_cross_entropy
from .multi_objective import EnsembleTasks, MultiObjectivePGD, TransformTasks, UniversalTasks
from .pgd import CW, FGSM, PGD, PGDL2
from .udr import UDRAttack

__all__ = ["Attack", "FGSM", "PGD", "PGDL2", "CW", "UDRAttack", "LOSSES", "cross_entropy", "kl_from_clean", "kl_to_clean",
           "carlini_wagner",
           "margin_cross_entropy", "MultiObjectivePGD", "EnsembleTasks", "UniversalTasks", "TransformTasks"]
