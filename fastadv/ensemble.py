"""An ensemble of classifiers seen as one classifier (METHODS.md section 3, "ensemble output").

Seed 000 (ALS, section 2) combines its members' logits, ``h = Σ α_i f_i`` with α_i = 1/I
(``combine="logit"``); seed 003 ch. 4 (CCE, ``f^en = (1/N) Σ_n f^n``, and TA-MOO's ensemble)
averages their predicted probabilities (``combine="prob"``), as does ADP's ensemble entropy
``H(mean_k p_k)``. METHODS.md section 3 assigns the combines to the methods. Either way the
ensemble's output is a logit vector, so every attack and the evaluation suite
(``fastadv.evaluate``, AutoAttack included) take it as one model and attack the combined
output white-box.

Members of one architecture (same class, same parameter and buffer names, shapes and dtypes)
can run as one ``torch.vmap`` over ``torch.func.functional_call`` with their parameters
stacked. The stack is taken in every forward from the members' own parameters (not
``torch.func.stack_module_state``, whose stacked leaves are detached copies), so gradients
reach each member's ``.grad`` and an optimiser over ``ensemble.parameters()`` works unchanged;
buffers, which the forward may update in place (BatchNorm's running statistics in training
mode), are copied back to their members afterwards. Which path is faster is measured by
``fastadv bench ensemble`` (benchmarks/bench_ensemble.py); :data:`BATCHED_DEFAULT` is its
outcome.
"""
from __future__ import annotations

import math
from typing import Iterable, List, Optional

import torch
from torch import nn
from torch.func import functional_call

from . import _validate as check

__all__ = ["Ensemble", "COMBINES", "BATCHED_DEFAULT", "log_mean_probability"]

COMBINES = ("prob", "logit")

# Looped: on the 2-core development CPU `fastadv bench ensemble` measured the loop faster in
# every case, batched taking 1.09-1.25x the loop's time on digits_cnn x 3 and 1.36-1.50x on
# PreActResNet-18 x 3 (figures in benchmarks/bench_ensemble.py's docstring). Not measured on a GPU.
BATCHED_DEFAULT = False


def log_mean_probability(member_logits: torch.Tensor) -> torch.Tensor:
    """``log((1/M) Σ_m softmax(z_m))`` of [M, B, C] member logits, without leaving log space: the
    output of a ``combine="prob"`` ensemble."""
    return torch.logsumexp(torch.log_softmax(member_logits, dim=-1), dim=0) - math.log(member_logits.shape[0])


def _signature(module: nn.Module):
    """What must agree for members to be stacked: class, and every parameter's and buffer's
    name, shape, dtype and device."""
    def entries(named):
        return tuple((name, tuple(t.shape), t.dtype, t.device) for name, t in named)
    return (type(module), entries(module.named_parameters()), entries(module.named_buffers()))


class Ensemble(nn.Module):
    """Members' logits combined into one logit vector.

    Args:
        members: the member classifiers (any ``nn.Module`` taking the batch and returning
            [B, C] logits; architectures may differ, class counts may not).
        combine: ``"prob"``, the log of the mean of the members' probabilities (seed 003 ch. 4,
            CCE and TA-MOO), or ``"logit"``, the mean of their logits (seed 000, ALS).
        batched: run members of one architecture as one vmapped call (True) or one after the
            other (False); None takes :data:`BATCHED_DEFAULT`, the measured faster path.

    ``members`` is an ``nn.ModuleList``: ``state_dict`` keys are ``members.<i>.<name>``, and
    ``.train()``, ``.eval()`` and ``.to()`` reach every member.
    """

    def __init__(self, members: Iterable[nn.Module], combine: str = "prob", batched: Optional[bool] = None):
        super().__init__()
        owner = type(self).__name__
        self.combine = check.choice(owner, "combine", combine, COMBINES)
        self.batched = BATCHED_DEFAULT if batched is None else check.flag(owner, "batched", batched)
        if isinstance(members, nn.Module) or not isinstance(members, Iterable):
            raise TypeError(f"{owner}: members must be an iterable of nn.Module, got {type(members).__name__}")
        members = list(members)
        if not members:
            raise ValueError(f"{owner}: members must hold at least one nn.Module, got none")
        for index, member in enumerate(members):
            if not isinstance(member, nn.Module):
                raise TypeError(f"{owner}: members[{index}] must be an nn.Module, got {type(member).__name__}")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.member_logits(x)
        return z.mean(0) if self.combine == "logit" else log_mean_probability(z)

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits, stacked: [M, B, C] in member order."""
        logits: List[Optional[torch.Tensor]] = [None] * len(self.members)
        for group in self._groups():
            try:
                if len(group) == 1:
                    logits[group[0]] = self.members[group[0]](x)
                else:
                    for index, z in zip(group, self._batched_logits(group, x)):
                        logits[index] = z
            except RuntimeError as error:
                # A member built for other inputs fails deep inside (a convolution's channel
                # count, a linear layer's width): say which member, and what it was given.
                # Other errors (out of memory, autograd's) pass unchanged.
                if isinstance(error, torch.OutOfMemoryError) or not any(
                        word in str(error) for word in ("shape", "size", "channels")):
                    raise
                names = ", ".join(f"members[{i}]" for i in group)
                raise ValueError(f"Ensemble: {names} cannot take inputs of shape {list(x.shape)} (members must "
                                 f"take the same inputs): {' '.join(str(error).split())}") from error
        shapes = [tuple(z.shape) for z in logits]
        if len(shapes[0]) != 2 or any(shape != shapes[0] for shape in shapes):
            listed = ", ".join(f"members[{i}] {list(shape)}" for i, shape in enumerate(shapes))
            raise ValueError(f"Ensemble: every member must return logits of one shape [B, C]; got {listed}")
        return torch.stack(logits)

    def _groups(self) -> List[List[int]]:
        """Member indices in runs: one group per architecture when batched, else singletons."""
        if not self.batched:
            return [[i] for i in range(len(self.members))]
        groups, occurrences = {}, {}
        for index, member in enumerate(self.members):
            # A module listed twice is two members sharing weights; its repeats go in later
            # groups, so that training-mode BatchNorm updates its statistics once per listing,
            # in member order, as the loop does (one vmapped call would update them once).
            occurrence = occurrences[id(member)] = occurrences.get(id(member), -1) + 1
            groups.setdefault((_signature(member), occurrence), []).append(index)
        return list(groups.values())

    def _batched_logits(self, group: List[int], x: torch.Tensor) -> torch.Tensor:
        members = [self.members[i] for i in group]
        named = [dict(m.named_parameters()) for m in members]
        params = {name: torch.stack([p[name] for p in named]) for name in named[0]}
        named_buffers = [dict(m.named_buffers()) for m in members]
        buffers = {name: torch.stack([b[name] for b in named_buffers]) for name in named_buffers[0]}

        def member(p, b, inputs):
            return functional_call(members[0], (p, b), (inputs,))
        # "different": each member draws its own dropout mask, as it would in the loop.
        z = torch.vmap(member, in_dims=(0, 0, None), randomness="different")(params, buffers, x)
        # Every buffer goes back, changed or not: vmap's BatchNorm updates the stacked running
        # statistics without bumping their version counter (torch 2.14), so a change cannot be
        # told cheaply, and the buffers are small next to the parameters stacked above.
        with torch.no_grad():
            for name, stacked in buffers.items():
                for own, updated in zip(named_buffers, stacked):
                    own[name].copy_(updated)
        return z

    def place(self, devices, home=None) -> "Ensemble":
        """Member i on ``devices[i]`` (members too large or too slow for one device), the
        ensemble's inputs and outputs on ``home`` (default: ``devices[0]``): each member takes its
        input moved to its device and gives its logits back on ``home``, by forward hooks, so
        that a method calling a member alone (ALS's reference attack, CCE's per-member losses)
        and every attack see one device. Autograd carries the gradients across. Members placed
        apart run one after the other (``batched`` groups members of one device only)."""
        owner = type(self).__name__
        devices = [torch.device(d) for d in devices]
        if len(devices) != len(self.members):
            raise ValueError(f"{owner}.place: devices must name one device per member ({len(self.members)}), "
                             f"got {len(devices)}")
        home = devices[0] if home is None else torch.device(home)
        for hook in getattr(self, "_placement_hooks", []):
            hook.remove()
        self._placement_hooks = []
        for member, device in zip(self.members, devices):
            member.to(device)
            self._placement_hooks += [
                member.register_forward_pre_hook(lambda module, args, device=device: tuple(
                    a.to(device) if isinstance(a, torch.Tensor) else a for a in args)),
                member.register_forward_hook(lambda module, args, output: output.to(home))]
        self.home = home
        return self

    def extra_repr(self) -> str:
        return f"combine={self.combine!r}, batched={self.batched}"
