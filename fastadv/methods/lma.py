"""LMA, seed 002's *logit moving average* (§4, Table 1, Algorithm 1): a margin loss and a
modified-Huber (mHuber) pull between moving averages of the natural and adversarial logits,
added to PGD-AT (``PGDATLMA``), TRADES (``TRADESLMA``) and MART (``MARTLMA``), and LMA-AT
(``LMAAT``, the seed's own method: LMA on MART's boosted cross-entropy); METHODS.md section 2."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _validate as check
from ..ops import logits as L
from .base import NaturalAndAdversarialMethod
from .mart import mart_loss
from .trades import trades_loss


class LogitMovingAverageMethod(NaturalAndAdversarialMethod):
    """``L' + (the base method's loss) + β·mHuber(Ē'_t, Ē_t, α)``, seed 002 Table 1:

    - ``L' = mean Σ_{j≠y} max(0, z_j(x') − z_y(x') + δ)²`` (Eq. 13);
    - ``Ē_t = τ·sg(Ē_{t−1}) + (1 − τ)·z(x)`` and ``Ē'_t = τ·sg(Ē'_{t−1}) + (1 − τ)·z(x')``
      (Algorithm 1), both starting at 0 and carried from batch to batch (the gradient flows
      through the current logits only); a batch of another size (the last one of an epoch)
      restarts them from 0. They are the method's state: saved in checkpoints, so a resumed
      run continues them exactly;
    - mHuber (seed 002 §3) of ``u − v`` elementwise, averaged over every element.

    The attack of every LMA method is PGD on ``CE + L'`` (``margin_ce``) from x + 0.001·N(0, I):
    Algorithm 1 writes it for LMA-AT and §4.4 for the AT and TRADES variants ("a similar approach
    is adopted" for the others).

    The default learning rate is a tenth of the dataset's (seed 002 §5.1: 0.01 where TRADES'
    setting has 0.1). Defaults: seed 002 §5.1's ResNet-18 CIFAR-10 setting: β = 86 (``beta``; 96 on CIFAR-100 and
    Tiny ImageNet), δ = 0.9 (``margin``), τ = 0.2 (``ema_decay``, §5.3.1), α = 5.345
    (``mhuber_alpha``; 2.345 for WRN-34-10, 6.345 for ResNet-18 on Tiny ImageNet). ``beta`` is
    the weight of the mHuber term, as seed 002 names it; the KL weight of TRADES + LMA and
    MART + LMA is ``kl_weight``.
    """

    attack_loss = "margin_ce"
    attack_init = "normal"
    default_beta = 86.0
    # The moving averages are one model's: members sharing them would mix their logits.
    trains_members = False
    # Seed 002 §5.1 trains at lr 0.01, a tenth of the 0.1 of TRADES' setting that the dataset
    # defaults follow; at the full rate the β = 86 regulariser collapses the digits model to
    # constant logits (every class 10%).
    lr_factor = 0.1
    option_help = {
        "beta": "weight β of the mHuber term",
        "margin": "margin δ of the squared hinge L'",
        "ema_decay": "τ of the logits' moving averages",
        "mhuber_alpha": "α of mHuber (5.345 for ResNet-18, 2.345 for WRN-34-10)",
    }

    def __init__(self, *, margin: float = 0.9, ema_decay: float = 0.2, mhuber_alpha: float = 5.345, **options):
        super().__init__(**options)
        self.margin = check.number(self.name, "margin", margin, low=0)
        self.ema_decay = check.number(self.name, "ema_decay", ema_decay, low=0, high=1, high_open=True)
        self.mhuber_alpha = check.number(self.name, "mhuber_alpha", mhuber_alpha, low=0, low_open=True)
        self._ema_natural = self._ema_adv = None

    def attack_options(self):
        return {"margin": self.margin}

    def base_terms(self, logits_natural, logits_adv, y) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss LMA is added to, and its named parts."""
        raise TypeError(f"{type(self).__name__} must define base_terms")

    def previous_average(self, previous, logits):
        """The stored average, or 0 (the start) when there is none of this batch's shape."""
        if previous is None or previous.shape != logits.shape:
            return torch.zeros_like(logits)
        return previous.to(logits)

    def loss_terms(self, logits_natural, logits_adv, y):
        margin = L.margin_sq_hinge(logits_adv, y, self.margin).mean()
        # Ē'_t = τ·sg(Ē'_{t−1}) + (1 − τ)·z(x'), Ē_t likewise, and mHuber(Ē'_t, Ē_t, α) in one fused op.
        mhuber, self._ema_adv, self._ema_natural = L.mhuber_moving_average(
            logits_adv, logits_natural, self.previous_average(self._ema_adv, logits_adv),
            self.previous_average(self._ema_natural, logits_natural), self.ema_decay, self.mhuber_alpha)
        base, parts = self.base_terms(logits_natural, logits_adv, y)
        return margin + base + self.beta * mhuber, {"margin_loss": margin, **parts, "mhuber": mhuber}

    def state_dict(self):
        if self._ema_natural is None:
            return {}
        return {"ema_natural": self._ema_natural, "ema_adv": self._ema_adv}

    def load_state_dict(self, state):
        if state and set(state) != {"ema_natural", "ema_adv"}:
            raise ValueError(f"{self.name}: expected the method state ema_natural and ema_adv, got {sorted(state)}")
        self._ema_natural, self._ema_adv = state.get("ema_natural"), state.get("ema_adv")


class PGDATLMA(LogitMovingAverageMethod):
    """PGD-AT + LMA, the logit moving average (seed 002 Eq. 15): ``L' + CE(z(x'), y) + β·mHuber(Ē'_t, Ē_t, α)``."""

    name = "pgd_at_lma"

    def base_terms(self, logits_natural, logits_adv, y):
        adversarial = F.cross_entropy(logits_adv, y)
        return adversarial, {"adversarial_loss": adversarial}


class TRADESLMA(LogitMovingAverageMethod):
    """TRADES + LMA (seed 002 Eq. 17): ``L' + CE(z(x), y) + (1/λ)·KL(p(x) ‖ p(x')) + β·mHuber``,
    1/λ = 6 (``kl_weight``, TRADES' own). The attack is PGD-margin_ce (§4.4), not TRADES' KL."""

    name = "trades_lma"
    option_help = {"kl_weight": "weight 1/λ of TRADES' KL term"}

    def __init__(self, *, kl_weight: float = 6.0, **options):
        super().__init__(**options)
        self.kl_weight = check.number(self.name, "kl_weight", kl_weight, low=0)

    def base_terms(self, logits_natural, logits_adv, y):
        loss, natural, robust = trades_loss(logits_natural, logits_adv, y, self.kl_weight)
        return loss, {"natural_loss": natural, "robust_loss": robust}


class MARTLMA(LogitMovingAverageMethod):
    """MART + LMA (seed 002 Table 1): ``L' + BCE(p(x'), y) + λ·KL(p(x) ‖ p(x'))·(1 − p_y(x)) +
    β·mHuber``, λ = 5 (``kl_weight``, MART's own)."""

    name = "mart_lma"
    option_help = {"kl_weight": "weight λ of MART's KL term"}

    def __init__(self, *, kl_weight: float = 5.0, **options):
        super().__init__(**options)
        self.kl_weight = check.number(self.name, "kl_weight", kl_weight, low=0)

    def base_terms(self, logits_natural, logits_adv, y):
        loss, bce, robust = mart_loss(logits_natural, logits_adv, y, self.kl_weight)
        return loss, {"bce": bce, "robust_loss": robust}


class LMAAT(LogitMovingAverageMethod):
    """LMA-AT, adversarial training with the logit moving average (seed 002 Eq. 18, Algorithm 1): ``L' + BCE(p(x'), y) + β·mHuber(Ē'_t, Ē_t, α)``,
    BCE MART's boosted cross-entropy (Eq. 7)."""

    name = "lma_at"

    def base_terms(self, logits_natural, logits_adv, y):
        bce = L.boosted_cross_entropy(logits_adv, y).mean()
        return bce, {"bce": bce}
