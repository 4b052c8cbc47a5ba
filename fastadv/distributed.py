"""Data parallelism that computes what one process computes on the global batch.

A run under torchrun deals each global batch out to the ranks (rank r holds the samples at
positions r, r + W, r + 2W, ... of it, W the world size: :func:`fastadv.train.epoch_batches`)
and averages the ranks' gradients, which, for a loss that is a mean over samples, is the
gradient of the loss on the global batch. Two things more make a step equal to the
single-process step on that batch:

- **The attacks' random starts** (:func:`batch_noise`). Inside :func:`global_batch`, a random
  start of an attack is drawn for the *global* batch, from a generator every rank holds in the
  same state (the trainer seeds the ranks alike), and each rank takes the rows of its own
  samples: the start a sample gets is the one the single-process run gives it. A draw whose
  leading dimension is k times the local batch (an attack on k stacked copies of the batch,
  CCE's per-member attacks) is drawn as k stacked global batches. Costs W times the draw of a
  start, once per attack.
- **The gradients of an ensemble** (:func:`average_gradients`): the members step through
  methods' own loops (ALS's reference turns, CCE's per-member attacks), outside any
  DistributedDataParallel forward, so the trainer averages the gradients itself, once per
  optimiser step, as one all-reduce of every gradient flattened into one buffer.

An ensemble can instead be sharded over the ranks, one member per rank (``--shard-members``):
every rank then runs the whole step on the whole batch and the members' logits travel between
them (:func:`to_members`, :func:`gather_members`, :func:`send_logits`, :func:`receive_logits`,
used by :meth:`fastadv.ensemble.Ensemble.shard`).

What stays rank-local under data parallelism, and so differs from the single-process run: BatchNorm's batch statistics
(each rank normalises its share), losses coupled across the batch (ASCL's contrastive anchors,
LRM's mixup pairs), and random draws other than the attacks' starts (dropout, augmentation),
which are drawn per rank.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator, NamedTuple

import torch
import torch.distributed as dist

__all__ = ["Share", "global_batch", "current_share", "batch_noise", "average_gradients", "is_distributed",
           "to_members", "gather_members", "send_logits", "receive_logits"]


class Share(NamedTuple):
    """This rank's share of the global batch: the samples at rank, rank + W, ... of it."""

    rank: int
    world_size: int
    #: the rank's batch size (every rank holds as many)
    batch: int


_local = threading.local()


def current_share() -> Share | None:
    """The share :func:`global_batch` set on this thread, or None."""
    return getattr(_local, "share", None)


@contextlib.contextmanager
def global_batch(rank: int, world_size: int, batch: int) -> Iterator[None]:
    """Inside, :func:`batch_noise` draws for the global batch of ``world_size`` ranks' batches of
    ``batch`` samples and returns rank ``rank``'s rows. Nothing changes with one rank."""
    previous = current_share()
    _local.share = Share(rank, world_size, batch) if world_size > 1 else None
    try:
        yield
    finally:
        _local.share = previous


def batch_noise(like: torch.Tensor, fill: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """A random tensor of ``like``'s shape, dtype, device and memory format, filled in place by ``fill``
    (e.g. ``lambda t: t.uniform_(-1, 1, generator=g)``): drawn for the global batch and sliced to
    this rank's rows inside :func:`global_batch`, drawn as is elsewhere (and for a draw whose
    leading dimension is no multiple of the rank's batch)."""
    share = current_share()
    if share is None or like.dim() == 0 or like.shape[0] % share.batch:
        return fill(torch.empty_like(like))
    copies = like.shape[0] // share.batch
    rest = tuple(like.shape[1:])
    layout = torch.channels_last if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last) \
        and not like.is_contiguous() else torch.contiguous_format
    full = fill(torch.empty((copies * share.batch * share.world_size,) + rest, dtype=like.dtype, device=like.device,
                            memory_format=layout))
    mine = full.view((copies, share.batch * share.world_size) + rest)[:, share.rank::share.world_size]
    return mine.reshape(like.shape).contiguous(memory_format=layout)


def is_distributed() -> bool:
    """Whether this process is one rank of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def average_gradients(parameters) -> None:
    """Every parameter's gradient replaced by its mean over the ranks: one all-reduce of the
    gradients flattened into one buffer per dtype and device. Parameters without a gradient are
    left out (which ones have one is the same on every rank: the ranks run the same code)."""
    if not is_distributed():
        return
    groups: dict = {}
    for parameter in parameters:
        if parameter.grad is not None:
            groups.setdefault((parameter.grad.dtype, parameter.grad.device), []).append(parameter.grad)
    world_size = dist.get_world_size()
    for grads in groups.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(world_size)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


# ----------------------------------------------------------------------------- members on ranks
# An ensemble sharded over the ranks (fastadv.ensemble.Ensemble.shard) holds member r on rank r;
# every rank runs the same computation on the same batch, and the members' logits travel by
# collectives. Each function below is one collective in the forward pass and, where the input
# needs a gradient, one in the backward pass (the all-reduce of _ToMembers), so that the ranks'
# collectives come in the same order whatever the members' architectures.
class _ToMembers(torch.autograd.Function):
    """The identity; its backward sums the input's gradient over the ranks (each rank's member
    adds its own part of it)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class _Gather(torch.autograd.Function):
    """This rank's member's logits [B, C] -> every rank's, [W, B, C]; the backward keeps this
    rank's slice (every rank computes the same loss from the gathered logits)."""

    @staticmethod
    def forward(ctx, z):
        parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, z.contiguous())
        ctx.rank = dist.get_rank()
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.rank]


class _Send(torch.autograd.Function):
    """Rank ``src``'s member's logits, sent to every rank; the backward is the identity."""

    @staticmethod
    def forward(ctx, z, src):
        z = z.contiguous().clone()
        dist.broadcast(z, src)
        return z

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _Receive(torch.autograd.Function):
    """Rank ``src``'s member's logits, received; the backward gives ``anchor`` (the member's
    input, through :func:`to_members`) a zero gradient, so that this rank takes part in the
    gradient's all-reduce."""

    @staticmethod
    def forward(ctx, anchor, src, shape, dtype):
        z = torch.empty(shape, dtype=dtype, device=anchor.device)
        dist.broadcast(z, src)
        ctx.anchor_shape, ctx.anchor_dtype = anchor.shape, anchor.dtype
        return z

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros(ctx.anchor_shape, dtype=ctx.anchor_dtype, device=grad.device), None, None, None


def to_members(x: torch.Tensor) -> torch.Tensor:
    """``x`` on its way into the members of a sharded ensemble: its gradient is summed over the
    ranks (where it needs one)."""
    return _ToMembers.apply(x) if x.requires_grad else x


def logits_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype members' logits travel in: float32, or float64 for a float64 model (half
    precision logits of autocast are sent as float32, which the losses compute in anyway)."""
    return torch.promote_types(dtype, torch.float32)


def gather_members(z: torch.Tensor) -> torch.Tensor:
    """Every rank's member's logits, [W, B, C], from this rank's [B, C] (in :func:`logits_dtype`)."""
    return _Gather.apply(z.to(logits_dtype(z.dtype)))


def send_logits(z: torch.Tensor, src: int) -> torch.Tensor:
    """This rank's member's logits (in :func:`logits_dtype`), sent to the others."""
    return _Send.apply(z.to(logits_dtype(z.dtype)), src)


def receive_logits(anchor: torch.Tensor, src: int, classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Rank ``src``'s member's logits [B, C] for the input ``anchor`` [B, ...], in
    :func:`logits_dtype` of the members' parameters' ``dtype``."""
    return _Receive.apply(anchor, src, (anchor.shape[0], classes), logits_dtype(dtype))
