"""The public fused ops of fastadv, one module per op family (see DESIGN.md)."""
from .logits import (boosted_cross_entropy, logit_pairing, logit_squeeze, margin_sq_hinge, mart_loss, mhuber,
                     mhuber_moving_average, smoothed_cross_entropy, soft_cross_entropy, trades_kl)
from .pgd import pgd_init, pgd_step, pgd_step_

__all__ = ["pgd_init", "pgd_step", "pgd_step_", "soft_cross_entropy", "smoothed_cross_entropy",
           "boosted_cross_entropy", "trades_kl", "mart_loss", "margin_sq_hinge", "mhuber", "mhuber_moving_average",
           "logit_pairing", "logit_squeeze"]
