"""CCE, crossing collaborative ensemble (seed 003 ch. 4, Eq. 5), METHODS.md section 3."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import _validate as check
from .base import AdversarialMethod, Objective, accuracy, as_ensemble, forward_logits, with_metrics

MODES = {"rm": (1.0, 1.0), "dm": (0.0, 5.0)}


class MembersSideBySide(nn.Module):
    """An ensemble's members applied to consecutive chunks of one batch: input [M·B, ...],
    member n on rows n·B .. (n+1)·B − 1 (:meth:`Ensemble.member_logits_each`). Attacking it with
    one PGD crafts every member's own adversarial examples at once: the loss is a sum over rows,
    and row block n depends on member n alone."""

    def __init__(self, ensemble):
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x):
        count = len(self.ensemble.members)
        return self.ensemble.member_logits_each(x.view(count, -1, *x.shape[1:])).flatten(0, 1)


def cce_member_loss(clean, own, crossing, y, lam_pm, lam_dm):
    """Member n's loss of seed 003 ch. 4 Eq. 5, batch-averaged, from its logits on x (``clean``,
    [B, C]), on its own adversarial examples x_a^n (``own``, [B, C]) and on the other members'
    x_a^i, i ≠ n (``crossing``, [N − 1, B, C]):

        CE(f^n(x), y) + CE(f^n(x_a^n), y) + (1/(N−1)) Σ_{i≠n} [ λ_pm·sg(f^n_y(x_a^i))·CE(f^n(x_a^i), y)
                                                              − λ_dm·(1 − sg(f^n_y(x_a^i)))·H(f^n(x_a^i)) ]

    f^n_y the probability member n gives the true class, H the entropy of its prediction.
    Returns (loss, promote term, demote term)."""
    others, batch, classes = crossing.shape
    log_p = torch.log_softmax(crossing, dim=-1)
    ce = -log_p.gather(-1, y.expand(others, batch).unsqueeze(-1)).squeeze(-1)  # [N−1, B]
    p_true = torch.exp(-ce).detach()
    entropy = -(log_p.exp() * log_p).sum(-1)
    promote = (p_true * ce).mean(1).sum() / others
    demote = ((1 - p_true) * entropy).mean(1).sum() / others
    loss = F.cross_entropy(clean, y) + F.cross_entropy(own, y) + lam_pm * promote - lam_dm * demote
    return loss, promote, demote


class CCE(AdversarialMethod):
    """Crossing collaborative ensemble (seed 003 ch. 4, Eq. 5): member n minimises
    :func:`cce_member_loss`, with x_a^n = PGD-ce on member n alone (uniform start); every
    member's examples are crafted in one batched attack (:class:`MembersSideBySide`). The members
    promote (λ_pm) the robustness of the ones an example does not fool yet, weighted by the
    confidence in the true class, and demote (λ_dm) by raising the entropy of the ones it fools,
    so that adversarial examples of one member stop transferring to the others. ``mode``: ``rm``
    (λ_pm = λ_dm = 1) or ``dm`` (λ_pm = 0, λ_dm = 5), the thesis's two settings. One optimiser
    step per batch on Σ_n L_n (the members' parameters are disjoint). The ensemble's output is
    the log of the members' mean probability."""

    name = "cce"
    ensemble = True
    min_members = 2
    ensemble_combine = "prob"
    option_help = {"mode": "rm (λ_pm = λ_dm = 1) or dm (λ_pm = 0, λ_dm = 5), seed 003 ch. 4"}

    def __init__(self, *, mode: str = "rm", **options):
        super().__init__(**options)
        self.mode = check.choice(self.name, "mode", mode, MODES)
        self.lam_pm, self.lam_dm = MODES[self.mode]

    def attack(self, model, x, y):
        """[N, B, ...]: x_a^n, member n's own PGD examples, crafted batched."""
        ensemble = as_ensemble(self.name, model)
        count = len(ensemble.members)
        stacked = x.repeat(count, *([1] * (x.dim() - 1)))
        attacked = super().attack(MembersSideBySide(ensemble), stacked, y.repeat(count))
        return attacked._replace(x_adv=attacked.x_adv.view(count, *x.shape))

    def objective(self, model, x, y, attack_model):
        members = as_ensemble(self.name, attack_model).members
        count = len(members)
        attacked = self.attack(attack_model, x, y)
        flat = attacked.x_adv.flatten(0, 1)
        losses, promotes, demotes, clean_acc, adv_acc, logits = [], [], [], [], [], []
        for n, member in enumerate(members):
            clean = forward_logits(member, x)
            adversarial = forward_logits(member, flat).view(count, *clean.shape)
            crossing = torch.cat([adversarial[:n], adversarial[n + 1:]])
            loss, promote, demote = cce_member_loss(clean, adversarial[n], crossing, y, self.lam_pm, self.lam_dm)
            losses.append(loss)
            promotes.append(promote.detach())
            demotes.append(demote.detach())
            clean_acc.append(accuracy(clean, y))
            adv_acc.append(accuracy(adversarial[n], y))
            logits += [clean, adversarial[n]]
        metrics = {"promote": torch.stack(promotes).mean(), "demote": torch.stack(demotes).mean(),
                   "clean_acc": torch.stack(clean_acc).mean(), "adv_acc": torch.stack(adv_acc).mean()}
        return with_metrics(Objective(sum(losses), metrics, tuple(logits)), attacked.metrics)
