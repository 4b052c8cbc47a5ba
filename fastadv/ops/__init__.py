"""The public fused ops of fastadv, one module per op family (see DESIGN.md)."""
from .pgd import pgd_init, pgd_step, pgd_step_

__all__ = ["pgd_init", "pgd_step", "pgd_step_"]
