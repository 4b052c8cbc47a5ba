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

What stays rank-local, and so differs from the single-process run: BatchNorm's batch statistics
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

__all__ = ["Share", "global_batch", "current_share", "batch_noise", "average_gradients", "is_distributed"]


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
    """A random tensor of ``like``'s shape, dtype, device and memory format, ``fill``\\ ed in place
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
