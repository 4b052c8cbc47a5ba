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
from .distributed import gather_members, receive_logits, send_logits, to_members

__all__ = ["Ensemble", "RemoteMember", "COMBINES", "BATCHED_DEFAULT", "log_mean_probability"]

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

    #: the rank holding its own member in a sharded ensemble (:meth:`shard`), else None
    shard_rank: Optional[int] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.member_logits(x)
        return z.mean(0) if self.combine == "logit" else log_mean_probability(z)

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits, stacked: [M, B, C] in member order (sharded: every rank's member
        at once, gathered, in float32)."""
        if self.shard_rank is not None:
            return gather_members(self._own(to_members(x)))
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

    def member_logits_each(self, xs: torch.Tensor) -> torch.Tensor:
        """Member i's logits on its own input ``xs[i]``: [M, B, ...] -> [M, B, C] (the
        per-member attacks of CCE and TA-MOO; sharded, every rank's member at once)."""
        if xs.shape[0] != len(self.members):
            raise ValueError(f"Ensemble.member_logits_each: xs must hold one batch per member ({len(self.members)}), "
                             f"got {xs.shape[0]}")
        if self.shard_rank is not None:
            return gather_members(self._own(to_members(xs)[self.shard_rank]))
        return torch.stack([member(inputs) for member, inputs in zip(self.members, xs)])

    def shard(self, rank: int, world_size: int, classes: int) -> "Ensemble":
        """This process's part of the ensemble sharded over a torchrun world of one rank per
        member: member ``rank`` stays, the others become :class:`RemoteMember` stubs, whose logits
        arrive from the rank holding them. Every rank then runs the same computation on the same
        batch: :meth:`member_logits` (the ensemble's output) computes every member at once, one
        per rank, and gathers their logits; a member called alone (ALS's reference attack, the
        per-member losses) computes on its rank and sends its logits to the others. Gradients
        reach each member on its own rank, and an input's gradient is summed over the ranks
        (fastadv.distributed). ``classes``: the members' number of classes (the logits' width the
        other ranks receive). The state dict holds this rank's member alone."""
        owner = type(self).__name__
        if world_size != len(self.members):
            raise ValueError(f"{owner}.shard: one member per rank: {len(self.members)} members on a world of "
                             f"{world_size} processes")
        if not 0 <= rank < world_size:
            raise ValueError(f"{owner}.shard: rank must be in [0, {world_size}), got {rank}")
        dtype = next(self.members[rank].parameters()).dtype
        for index in range(len(self.members)):
            if index != rank:
                self.members[index] = RemoteMember(index, classes, dtype)
        own = self.members[rank]
        own.register_forward_pre_hook(lambda module, args: None if self._gathering else tuple(
            to_members(a) if isinstance(a, torch.Tensor) else a for a in args))
        own.register_forward_hook(lambda module, args, output: None if self._gathering else send_logits(output, rank))
        self.shard_rank, self.batched, self._gathering = rank, False, False
        return self

    def _own(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's member on ``x``, without its sending hooks (the caller gathers)."""
        self._gathering = True
        try:
            return self.members[self.shard_rank](x)
        finally:
            self._gathering = False

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
        shard = "" if self.shard_rank is None else f", shard_rank={self.shard_rank}"
        return f"combine={self.combine!r}, batched={self.batched}{shard}"


class RemoteMember(nn.Module):
    """Member ``index`` of a sharded ensemble (:meth:`Ensemble.shard`) on a rank that does not
    hold it: called on a batch, it receives the member's logits [B, classes] from rank
    ``index``, which computes them at the same time."""

    def __init__(self, index: int, classes: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.index, self.classes = index, classes
        # follows the ensemble's .to() / .double(): the dtype the member's logits arrive in
        self.register_buffer("dtype_of_parameters", torch.zeros(0, dtype=dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return receive_logits(to_members(x), self.index, self.classes, self.dtype_of_parameters.dtype)

    def extra_repr(self) -> str:
        return f"index={self.index}, classes={self.classes}"
