"""The attack base class: torchattacks' calling convention, ``x_adv = attack(x, y)``.

What every attack shares (METHODS.md section 1): the model runs in eval mode during the attack
(BatchNorm statistics frozen, dropout off) and every submodule gets its own ``training`` flag
back afterwards; gradients are taken with respect to the input only, so parameters' ``.grad``
are never touched; the attack works whatever grad mode the caller is in (``torch.no_grad()``
and ``torch.inference_mode()`` evaluation loops included); inputs live in ``clip`` (the unit
box: normalisation belongs inside the model).
"""
from __future__ import annotations

import abc
import math
from numbers import Real
from typing import Optional

import torch
from torch import nn

from ..ops.pgd import _clip

__all__ = ["Attack"]

AMP_DTYPES = (torch.bfloat16, torch.float16)


def check_radius(owner: str, name: str, value, *, allow_none: bool = False):
    """``value`` as a float >= 0, a floating tensor of shape [B] with entries >= 0, or None
    (when allowed). The batch size is checked at call time by :func:`radius_for_batch`."""
    if value is None and allow_none:
        return None
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        value = value.item()
    if isinstance(value, Real) and not isinstance(value, bool):
        value = float(value)
        if math.isnan(value) or value < 0:
            raise ValueError(f"{owner}: {name} must be >= 0, got {value}")
        return value
    if not isinstance(value, torch.Tensor):
        expected = "a float, a tensor of shape [B] or None" if allow_none else "a float or a tensor of shape [B]"
        raise TypeError(f"{owner}: {name} must be {expected}, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{owner}: {name} must be a floating-point tensor, got dtype {value.dtype}")
    if value.dim() != 1:
        raise ValueError(f"{owner}: {name} must be a float or a tensor of shape [B], got shape {list(value.shape)}")
    if bool(((value < 0) | value.isnan()).any()):
        raise ValueError(f"{owner}: every entry of {name} must be >= 0 (and not NaN)")
    return value.detach()


def radius_for_batch(owner: str, name: str, value, x: torch.Tensor):
    """A checked radius ready for the ops: a float, or a [B] tensor on x's device."""
    if not isinstance(value, torch.Tensor):
        return value
    if value.shape != (x.shape[0],):
        raise ValueError(f"{owner}: {name} must be a float or have shape [B] = [{x.shape[0]}], "
                         f"got {list(value.shape)}")
    return value.to(x.device)


def check_positive_int(owner: str, name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{owner}: {name} must be >= 1, got {value}")
    return value


def check_real(owner: str, name: str, value, *, minimum: Optional[float] = None) -> float:
    if not isinstance(value, Real) or isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a float, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        bound = "a finite float" if minimum is None else f"a finite float >= {minimum}"
        raise ValueError(f"{owner}: {name} must be {bound}, got {value}")
    return value


class Attack(abc.ABC):
    """Base of the attacks: ``attack(x, y)`` returns adversarial examples for the batch.

    Args:
        model: the classifier, an ``nn.Module`` mapping inputs in ``clip`` to logits [B, C].
        eps: the radius of the threat model, a float or a per-sample tensor of shape [B].
        amp_dtype: None, or ``torch.bfloat16`` / ``torch.float16`` to run the attack's forward
            passes under ``torch.autocast`` (the losses are computed in float32 and the
            gradient arrives in x's dtype, so the step itself is unchanged). float16 gradients
            can underflow without loss scaling; bfloat16 is the safe choice.
        clip: the (min, max) box of valid inputs, or None for no box.

    Subclasses implement :meth:`perturb`; ``__call__`` validates the batch, switches the model
    to eval mode and back, and enables autograd around it.
    """

    def __init__(self, model: nn.Module, eps, *, amp_dtype: Optional[torch.dtype] = None, clip=(0.0, 1.0)):
        owner = type(self).__name__
        if not isinstance(model, nn.Module):
            raise TypeError(f"{owner}: model must be a torch.nn.Module, got {type(model).__name__}")
        if amp_dtype is not None and amp_dtype not in AMP_DTYPES:
            raise ValueError(f"{owner}: amp_dtype must be None, torch.bfloat16 or torch.float16, got {amp_dtype!r}")
        self.model = model
        self.eps = check_radius(owner, "eps", eps)
        self.amp_dtype = amp_dtype
        self.clip = None if clip is None else _clip(owner, clip)

    @abc.abstractmethod
    def perturb(self, x: torch.Tensor, y: torch.Tensor, eps, **overrides) -> torch.Tensor:
        """The attack proper, on a validated batch with the model in eval mode and grad enabled."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor, eps=None, **overrides) -> torch.Tensor:
        """Adversarial examples for (x, y): detached, same shape, dtype and device as x.

        ``eps`` (and the keyword overrides a subclass accepts) replace the attack's own values
        for this call only, e.g. a per-sample ε schedule.
        """
        owner = type(self).__name__
        x, y = self._check_batch(x, y)
        eps = radius_for_batch(owner, "eps", self.eps if eps is None else check_radius(owner, "eps", eps), x)
        modes = [(module, module.training) for module in self.model.modules()]
        self.model.eval()
        try:
            # Evaluation loops call attacks under no_grad or inference_mode; the attack needs
            # autograd regardless. Inference tensors cannot be saved for backward, hence the clones.
            with torch.inference_mode(False), torch.enable_grad():
                if x.is_inference():
                    x = x.clone()
                if y.is_inference():
                    y = y.clone()
                x_adv = self.perturb(x, y, eps, **overrides)
        finally:
            # Set the flags directly: model.train(flag) would overwrite the submodules' own modes.
            for module, training in modes:
                module.training = training
        return x_adv.detach()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits, under autocast when ``amp_dtype`` is set (then cast to float32
        so that the attack losses are computed in full precision)."""
        if self.amp_dtype is None:
            return self.model(x)
        with torch.autocast(device_type=x.device.type, dtype=self.amp_dtype):
            z = self.model(x)
        return z.float()

    def check_labels(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Labels in [0, C): checked once per call on the first logits (one host sync), because
        an out-of-range label on the GPU is an opaque device-side assert in the loss."""
        owner = type(self).__name__
        if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
            raise ValueError(f"{owner}: the model must return logits of shape [B, C] = [{y.shape[0]}, C], "
                             f"got {list(logits.shape)}")
        classes = logits.shape[1]
        if y.numel() and bool(((y < 0) | (y >= classes)).any()):
            raise ValueError(f"{owner}: y must hold class indices in [0, {classes}), got values in "
                             f"[{int(y.min())}, {int(y.max())}]")

    def _check_batch(self, x, y):
        owner = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{owner}: x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{owner}: x must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() < 1:
            raise ValueError(f"{owner}: x must have a batch dimension, got a 0-dim tensor")
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"{owner}: y must be a torch.Tensor of class indices, got {type(y).__name__}")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"{owner}: y must be an integer tensor of class indices, got dtype {y.dtype}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"{owner}: y must have shape [B] = [{x.shape[0]}] to match x {list(x.shape)}, "
                             f"got {list(y.shape)}")
        if y.device != x.device:
            raise ValueError(f"{owner}: y must be on x's device {x.device}, got {y.device}")
        x = x.detach()
        # A batch without a row layout (a strided slice) would be re-laid-out by every step.
        if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            x = x.contiguous()
        return x, y.detach().long()

    def __repr__(self) -> str:
        shown = ", ".join(f"{key}={value!r}" for key, value in vars(self).items()
                          if key not in ("model", "generator") and not key.startswith("_"))
        return f"{type(self).__name__}({shown})"

