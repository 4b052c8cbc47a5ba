"""Label smoothing as a defence (natural training), METHODS.md section 2, seed 001 §4 Eq. 8."""
from __future__ import annotations

from .. import _validate as check
from ..ops import logits as L
from .base import Method, Objective, accuracy, forward_logits


class LabelSmoothing(Method):
    """``CE(z(x), t)`` on clean inputs only, no attack, with seed 001's smoothed target
    (Eq. 8): ``t = 1 − s`` on y and ``s/(C − 1)`` on every other class (not torch's
    ``label_smoothing``, which spreads s/C over every class, y included).

    s = 0.1 (``smoothing``), the value seed 001 §5.2 combines with LRM on CIFAR; §4 (Fig. 2)
    studies label smoothing alone for s up to 0.75 without fixing one. The seed's range is
    s ∈ [0, 1 − 1/C].
    """

    name = "label_smoothing"
    step_graph = True
    adversarial = False
    option_help = {"smoothing": "label smoothing s: the target is 1 - s on y and s/(C - 1) elsewhere"}

    def __init__(self, smoothing: float = 0.1, **options):
        super().__init__(**options)
        self.smoothing = check.number(self.name, "smoothing", smoothing, low=0, high=1)

    def objective(self, model, x, y, attack_model):
        logits = forward_logits(model, x)
        loss = L.smoothed_cross_entropy(logits, y, self.smoothing).mean()
        return Objective(loss, {"clean_acc": accuracy(logits, y)}, (logits,))
