"""FGSM and PGD with the losses of METHODS.md section 1, on the fused pgd ops.

PGD:  x_0 = start(x);  K times  x_{k+1} = Π_{B_ε(x) ∩ clip}(x_k + α·step(∇x L(z(x_k))))
with step = sign (L∞) or g/‖g‖₂ (L2), L one of :data:`~fastadv.attacks.losses.LOSSES`.
FGSM is one L∞ step of size ε from x itself with the CE loss.

The loop keeps one adversarial buffer per restart and updates it in place with the fused step
(``fastadv.ops.pgd.unchecked.pgd_step_``); per step the only work besides the model's
forward/backward is the per-sample loss and the fused step, and nothing is read back from the
device: every argument was checked once, where it entered.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
from torch import nn

from .. import _validate as check
from ..ops.pgd import INITS, NORMS, unchecked
from . import graph as graphs
from .base import Attack, radius_for_batch
from .losses import CLEAN_TARGET_LOSSES, CW_KAPPA, LOSSES, UNCHECKED

__all__ = ["PGD", "FGSM", "CW", "PGDL2"]


class PGD(Attack):
    """Projected gradient ascent on a per-sample loss (METHODS.md section 1).

    Args:
        model: the classifier (inputs in ``clip``, normalisation inside the model).
        eps: radius of the L∞ or L2 ball, a float or a per-sample tensor [B].
        alpha: step size, a float, a per-sample tensor [B], or None for a step of ``eps``.
        steps: number of steps K.
        norm: "linf" or "l2".
        loss: "ce", "kl" (TRADES: KL(p(x)‖p(x')), z(x) computed once before the loop),
            "kl_reverse" (KL(p(x')‖p(x)), UDR-TRADES' and UDR-MART's order, z(x) likewise),
            "cw" (CW margin capped at ``kappa``) or "margin_ce" (LMA-AT, margin ``margin``).
        init: "uniform" (uniform in the ball), "normal" (x + 0.001·N(0, I), the TRADES and
            LMA-AT start, projected into the ball) or None (start at x).
        restarts: number of runs from fresh random starts. Per sample the result is the point
            of the first restart that fools the model (argmax ≠ y at the final point), and if
            none does, the final point with the highest loss (the first on ties).
        early_stop: samples that are misclassified at the current point (argmax ≠ y, for the
            kl loss too) make no further steps and keep that point; the loop ends when every
            sample is fooled. Costs one host sync per step (whether any sample is left), hence
            off by default.
        kappa: κ of the "cw" loss (50, seed 002's evaluation).
        margin: δ of the "margin_ce" loss (0.9, seed 002).
        amp_dtype, clip: see :class:`~fastadv.attacks.base.Attack`.
        generator: a ``torch.Generator`` on x's device for reproducible random starts.
        graph: False, True or "auto": run each restart (random start, K forward/backward passes,
            fused steps) as a CUDA graph captured once per model, batch shape, dtype, layout and
            settings, and replayed per batch (:mod:`fastadv.attacks.graph`); the same examples as
            without it, from the same random state, with one launch instead of thousands. True
            refuses what cannot be captured (CPU tensors, ``early_stop``, a model that reads a
            device value), naming why; "auto" runs such calls without a graph and warns once.

    ``eps`` and ``alpha`` can be overridden per call: ``attack(x, y, eps=..., alpha=...)``.
    Forward passes: one per step, plus one clean forward for the kl loss, plus one at the
    final point of each restart when ``restarts > 1`` (to pick the point to keep).

    Host synchronisations of a call: one to check the labels' range on the first logits; one
    per per-sample ``eps`` or ``alpha`` passed to the call (a per-sample radius given to the
    constructor was read there); none per restart, none per step without ``early_stop``, one
    per step with it. Choosing the point to keep across restarts reads nothing back.
    """

    def __init__(self, model: nn.Module, eps=8 / 255, alpha=2 / 255, steps: int = 10, norm: str = "linf",
                 loss: str = "ce", init: Optional[str] = "uniform", restarts: int = 1, early_stop: bool = False,
                 kappa: float = CW_KAPPA, margin: float = 0.9, amp_dtype: Optional[torch.dtype] = None,
                 clip=(0.0, 1.0), generator: Optional[torch.Generator] = None, graph=False):
        super().__init__(model, eps, amp_dtype=amp_dtype, clip=clip)
        owner = type(self).__name__
        self.alpha = check.radius(owner, "alpha", alpha, allow_none=True)
        self.steps = check.integer(owner, "steps", steps, low=1)
        # The ops' spelling is lower case; torchattacks' "Linf" and "L2" are accepted too.
        self.norm = check.choice(owner, "norm", norm.lower() if isinstance(norm, str) else norm, NORMS)
        self.loss = check.choice(owner, "loss", loss, LOSSES)
        self.init = check.choice(owner, "init", init, INITS, allow_none=True)
        self.restarts = check.integer(owner, "restarts", restarts, low=1)
        if self.restarts > 1 and init is None:
            raise ValueError(f"{owner}: restarts > 1 needs a random init ('uniform' or 'normal'); "
                             f"from init=None every restart is the same run")
        self.early_stop = check.flag(owner, "early_stop", early_stop)
        self.kappa = check.number(owner, "kappa", kappa, low=0.0)  # inf: the uncapped margin
        self.margin = check.number(owner, "margin", margin, low=0.0)
        if self.margin == math.inf:  # every hinge would be infinite, every gradient NaN
            raise ValueError(f"{owner}: margin must be finite, got inf")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"{owner}: generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.generator = generator
        self.graph = graphs.graph_mode(owner, graph)
        if self.graph is True and early_stop:
            raise graphs.GraphUnavailable(graphs.early_stop_reason(owner))

    def perturb(self, x: torch.Tensor, y: torch.Tensor, eps, alpha=None) -> torch.Tensor:
        owner = type(self).__name__
        alpha = self.alpha if alpha is None else check.radius(owner, "alpha", alpha)
        alpha = eps if alpha is None else radius_for_batch(owner, "alpha", alpha, x)
        loss = self._loss_function()
        run = functools.partial(self._run, loss=loss)
        best = best_loss = best_fooled = None
        target = None
        for restart in range(self.restarts):
            x_adv = None
            if self.graph:
                x_adv = graphs.run_graphed(owner, self.graph, self.model, self._graph_settings(), x, y, eps, alpha, run,
                                           self.check_labels, self.generator, self.early_stop,
                                           read_labels=restart == 0)
            if x_adv is None:
                if target is None:
                    target = self._target(x, y)
                x_adv = self._ascend(x, y, target, eps, alpha, loss, self.check_labels if restart == 0 else None)
            if self.restarts == 1:
                return x_adv
            with torch.no_grad():
                logits = self.logits(x_adv)
                if target is None:
                    target = self._target(x, y)
                final_loss = loss(logits, target)
                fooled = logits.argmax(dim=1) != y
            if best is None:
                best, best_loss, best_fooled = x_adv, final_loss, fooled
                continue
            # A sample that is fooled keeps its point; otherwise a fooling or worse point wins.
            replace = ~best_fooled & (fooled | (final_loss > best_loss))
            best = torch.where(replace.view((-1,) + (1,) * (x.dim() - 1)), x_adv, best)
            best_loss = torch.where(replace, final_loss, best_loss)
            best_fooled = best_fooled | fooled
        return best

    def _graph_settings(self) -> tuple:
        """What a captured run depends on besides its tensors: a change captures a new graph."""
        return (type(self), self.norm, self.loss, self.init, self.steps, self.kappa, self.margin, self.amp_dtype,
                self.clip)

    def _target(self, x, y):
        """What the loss compares the logits with: the clean logits z(x) for the kl losses, else y."""
        return self._clean_logits(x) if self.loss in CLEAN_TARGET_LOSSES else y

    def _run(self, x, y, eps, alpha, check, loss):
        """One run as a function of its tensors alone, what a CUDA graph captures."""
        return self._ascend(x, y, self._target(x, y), eps, alpha, loss, check)

    def _loss_function(self):
        if self.loss == "cw":
            return functools.partial(UNCHECKED["cw"], kappa=self.kappa)
        if self.loss == "margin_ce":
            return functools.partial(UNCHECKED["margin_ce"], delta=self.margin)
        return UNCHECKED[self.loss]

    def _clean_logits(self, x: torch.Tensor) -> torch.Tensor:
        """z(x) for the kl loss: constant during the attack, so computed once, without a graph."""
        with torch.no_grad():
            return self.logits(x)

    def _start(self, x: torch.Tensor, eps) -> torch.Tensor:
        if self.init is None:
            return x.clone()
        start = unchecked.pgd_init(x, eps, self.norm, self.init, self.generator, self.clip)
        if self.init == "normal":
            # 0.001·N(0, I) ignores eps: a zero-step projection puts the start inside the ball,
            # so a sample that never steps (early stop, a tiny per-sample eps) is returned in it.
            unchecked.pgd_step_(start, torch.zeros_like(start), x, eps, 0.0, self.norm, self.clip)
        return start

    def _ascend(self, x, y, target, eps, alpha, loss, check_labels) -> torch.Tensor:
        """One run of the attack from a fresh start; returns the final point (no grad).
        ``check_labels(logits, y)`` is called on the first logits unless it is None."""
        # One leaf buffer for the whole run: the in-place step (under no_grad) updates it, and the
        # previous step's graph is already freed, so no per-step detach/copy is needed.
        x_adv = self._start(x, eps).requires_grad_(True)
        active = None
        for step in range(self.steps):
            logits = self.logits(x_adv)
            if check_labels is not None and step == 0:
                check_labels(logits, y)
            if self.early_stop:
                active = logits.argmax(dim=1) == y
                if not bool(active.any()):
                    break
            # autograd returns the gradient in x_adv's dtype, also when the forward ran in bf16.
            (grad,) = torch.autograd.grad(loss(logits, target).sum(), x_adv)
            if grad.stride() != x_adv.stride():
                # The fused step reads the three batches in one row layout (a channels_last
                # input can come back with a contiguous gradient).
                grad = torch.empty_like(x_adv).copy_(grad)
            with torch.no_grad():
                self._step(x_adv, grad, x, eps, alpha, active)
        return x_adv.requires_grad_(False)

    def _step(self, x_adv, grad, x, eps, alpha, active) -> None:
        """The update of one step, in place on ``x_adv`` (the fused PGD step)."""
        unchecked.pgd_step_(x_adv, grad, x, eps, alpha, self.norm, self.clip, active)


class FGSM(PGD):
    """``x' = clip(x + ε·sign ∇x CE(z(x), y))``: one step of size ε from x (no random start)."""

    def __init__(self, model: nn.Module, eps=8 / 255, amp_dtype: Optional[torch.dtype] = None, clip=(0.0, 1.0)):
        super().__init__(model, eps=eps, alpha=None, steps=1, norm="linf", loss="ce", init=None,
                         amp_dtype=amp_dtype, clip=clip)


class CW(PGD):
    """PGD on the CW margin loss capped at κ (CW-PGD / CW∞ of the evaluations, κ=50).

    Not torchattacks' ``CW`` (the optimisation-based Carlini-Wagner L2 attack)."""

    def __init__(self, model: nn.Module, eps=8 / 255, alpha=2 / 255, steps: int = 10, kappa: float = CW_KAPPA, **kwargs):
        super().__init__(model, eps, alpha, steps, loss="cw", kappa=kappa, **kwargs)


class PGDL2(PGD):
    """PGD in the L2 ball (eps=0.5, the usual CIFAR L2 radius, and alpha=eps/4)."""

    def __init__(self, model: nn.Module, eps=0.5, alpha=0.125, steps: int = 10, **kwargs):
        super().__init__(model, eps, alpha, steps, norm="l2", **kwargs)
