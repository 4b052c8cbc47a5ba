"""The public fused ops of fastadv, one module per op family (see DESIGN.md)."""
from . import contrastive, logits, pgd, simplex
from .contrastive import pairwise_compactness, supcon_loss, two_view_pair
from .logits import *  # noqa: F401,F403  (every op of the family: logits.__all__)
from .pgd import pgd_init, pgd_step, pgd_step_, soft_cost, udr_step, udr_step_
from .simplex import min_norm_weights, simplex_distance_sq, simplex_project

__all__ = pgd.__all__ + logits.__all__ + simplex.__all__ + contrastive.__all__
