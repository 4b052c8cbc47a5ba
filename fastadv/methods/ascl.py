"""ASCL, adversarial supervised contrastive learning (Bui et al. 2021), METHODS.md section 2,
seed 003 ch. 3 (§3.4)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import _validate as check
from ..ops.contrastive import DEFAULT_TAU, SIMILARITIES, STRATEGIES, two_view_pair, unchecked
from .representation import RepresentationMethod
from .trades import trades_kl


def ascl_views(features_natural, logits_natural, features_adv, logits_adv, y):
    """(z, labels, preds, pair) of ``L_SCL``'s 2B anchors: the clean views, then the adversarial
    ones, ``z = [f(x); f(x')]``, ``labels = [y; y]``, ``preds = [argmax h(x); argmax h(x')]``
    (each view's own prediction, detached), ``pair`` = anchor i's other view (i ± B)."""
    z = torch.cat([features_natural, features_adv])
    labels = torch.cat([y, y])
    preds = torch.cat([logits_natural.argmax(dim=1), logits_adv.argmax(dim=1)]).detach()
    return z, labels, preds, two_view_pair(y.shape[0], device=y.device)


def ascl_loss(features_natural, logits_natural, features_adv, logits_adv, y, *, tau=DEFAULT_TAU,
              strategy="global", similarity="cosine", scl_weight=1.0, vat_weight=2.0):
    """(loss, its parts) with

        loss = CE(h(x), y) + CE(h(x'), y) + λ_scl·L_SCL + λ_vat·KL(h(x) ‖ h(x'))

    ``L_SCL`` over the two views of :func:`ascl_views` (METHODS.md section 2's table of selection
    strategies), seed 003's Eq. 3: ``(1/N) Σ_i (L_i + L_i^a)`` over the N pairs, twice the mean over
    the 2N anchors (the authors' code takes the mean, which halves λ_scl's effect). The labels must
    be valid class indices (``L_SCL`` is the unchecked op: the attack read their range once; the
    predictions and the pairing are valid by construction)."""
    natural = F.cross_entropy(logits_natural, y)
    adversarial = F.cross_entropy(logits_adv, y)
    z, labels, preds, pair = ascl_views(features_natural, logits_natural, features_adv, logits_adv, y)
    contrastive = unchecked.supcon_loss(z, labels, preds, pair, tau, strategy, similarity, "sum") / y.shape[0]
    smoothness = trades_kl(logits_natural, logits_adv)
    loss = natural + adversarial + scl_weight * contrastive + vat_weight * smoothness
    return loss, {"natural_loss": natural, "adversarial_loss": adversarial, "contrastive_loss": contrastive,
                  "smoothness": smoothness}


class ASCL(RepresentationMethod):
    """ASCL (seed 003 §3.4, METHODS.md section 2): :func:`ascl_loss` on the penultimate features f
    (no projection head) and the logits h of x and x' = PGD-ce (uniform start, the method's ε, α
    and steps, as PGD-AT).

    Defaults: λ_scl = 1 and λ_vat = 2 (seed 003 ch. 3 appendix C, "we choose λ^SCL = 1,
    λ^VAT = 2 as the default setting"), τ = 0.07, cosine similarity, the ``global`` strategy
    (SupCon over the two views); ``hard-ls``, ``soft-ls`` and ``leaked-ls`` are the seed's local
    selection strategies.
    """

    name = "ascl"
    batch_coupled = "its contrastive loss takes the other samples of the batch as positives and negatives"
    option_help = {
        "strategy": f"selection of the positives and negatives of L_SCL: {', '.join(STRATEGIES)} "
                    "(METHODS.md section 2)",
        "tau": "temperature τ of L_SCL",
        "similarity": f"similarity s of L_SCL: {', '.join(SIMILARITIES)} (l1, l2: minus the distance)",
        "scl_weight": "weight λ_scl of the contrastive loss L_SCL",
        "vat_weight": "weight λ_vat of KL(h(x) || h(x'))",
    }

    def __init__(self, *, strategy: str = "global", tau: float = DEFAULT_TAU, similarity: str = "cosine",
                 scl_weight: float = 1.0, vat_weight: float = 2.0, **options):
        super().__init__(**options)
        self.strategy = check.choice(self.name, "strategy", strategy, STRATEGIES)
        self.tau = check.number(self.name, "tau", tau, low=0, low_open=True, high=math.inf, high_open=True)
        self.similarity = check.choice(self.name, "similarity", similarity, SIMILARITIES)
        self.scl_weight = check.number(self.name, "scl_weight", scl_weight, low=0)
        self.vat_weight = check.number(self.name, "vat_weight", vat_weight, low=0)

    def loss_terms(self, model, natural, adversarial, y):
        return ascl_loss(natural.features, natural.logits, adversarial.features, adversarial.logits, y,
                         tau=self.tau, strategy=self.strategy, similarity=self.similarity,
                         scl_weight=self.scl_weight, vat_weight=self.vat_weight)
