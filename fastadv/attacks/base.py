"""The attack base class: torchattacks' calling convention, ``x_adv = attack(x, y)``.

What every attack shares (METHODS.md section 1): the model runs in eval mode during the attack
(BatchNorm statistics frozen, dropout off) and every submodule gets its own ``training`` flag
back afterwards; gradients are taken with respect to the input only, so parameters' ``.grad``
are never touched; the attack works whatever grad mode the caller is in (``torch.no_grad()``
and ``torch.inference_mode()`` evaluation loops included); inputs live in ``clip`` (the unit
box: normalisation belongs inside the model).

Host synchronisations: arguments are validated where they enter, so that the loop over steps
reads nothing back from the device. A call reads the labels once (on the first logits, when the
number of classes is known) and each per-sample radius passed to the call once; a per-sample
radius given to the constructor is read there, not again per call.
"""
from __future__ import annotations

import abc
from typing import Optional

import torch
from torch import nn

from .. import _validate as check
from ..hardware import warn_slow_cpu_bf16
from ..ops.pgd import radius_dtype

__all__ = ["Attack"]

AMP_DTYPES = (torch.bfloat16, torch.float16)


def radius_for_batch(owner: str, name: str, value, x: torch.Tensor):
    """A radius already checked by :func:`fastadv._validate.radius`, ready for the unchecked ops:
    a float, or a contiguous [B] tensor on x's device in the accumulation dtype (metadata only:
    its entries were read where it entered)."""
    if not isinstance(value, torch.Tensor):
        return value
    if value.shape != (x.shape[0],):
        raise ValueError(f"{owner}: {name} must be a float or have shape [B] = [{x.shape[0]}], "
                         f"got {list(value.shape)}")
    return value.to(device=x.device, dtype=radius_dtype(x.dtype)).contiguous()


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
        self.eps = check.radius(owner, "eps", eps)
        self.amp_dtype = amp_dtype
        self.clip = check.clip_range(owner, clip)

    @abc.abstractmethod
    def perturb(self, x: torch.Tensor, y: torch.Tensor, eps, **overrides) -> torch.Tensor:
        """The attack proper, on a validated batch with the model in eval mode and grad enabled.

        ``y`` is a contiguous int64 tensor whose range is not yet checked: the subclass calls
        :meth:`check_labels` on the first logits it computes. ``eps`` is ready for the
        unchecked ops (see :func:`radius_for_batch`)."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor, eps=None, **overrides) -> torch.Tensor:
        """Adversarial examples for (x, y): detached, same shape, dtype and device as x.

        ``eps`` (and the keyword overrides a subclass accepts) replace the attack's own values
        for this call only, e.g. a per-sample ε schedule.
        """
        owner = type(self).__name__
        x, y = self._check_batch(x, y)
        if self.amp_dtype == torch.bfloat16 and x.device.type == "cpu":
            warn_slow_cpu_bf16(f"{owner}(amp_dtype=torch.bfloat16) on the CPU")
        eps = self.eps if eps is None else check.radius(owner, "eps", eps)
        eps = radius_for_batch(owner, "eps", eps, x)
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
        """Labels in [0, C), read once per call on the first logits (one host sync): the loop's
        unchecked losses would read out of bounds, and on the GPU an out-of-range label in
        torch's own cross-entropy is an opaque device-side assert."""
        owner = type(self).__name__
        if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
            raise ValueError(f"{owner}: the model must return logits of shape [B, C] = [{y.shape[0]}, C], "
                             f"got {list(logits.shape)}")
        check.labels(owner, y, batch=y.shape[0], classes=logits.shape[1], device=logits.device)

    def _check_batch(self, x, y):
        owner = type(self).__name__
        x = check.tensor(owner, "x", x, min_dim=1).detach()
        y = check.labels(owner, y, batch=x.shape[0], classes=None, device=x.device)
        # A batch without a row layout (a strided slice) would be re-laid-out by every step.
        if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            x = x.contiguous()
        return x, y.detach()

    def __repr__(self) -> str:
        shown = ", ".join(f"{key}={value!r}" for key, value in vars(self).items()
                          if key not in ("model", "generator") and not key.startswith("_"))
        return f"{type(self).__name__}({shown})"
