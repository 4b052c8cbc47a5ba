"""The contrastive family: losses over every pair of a batch's representations, in memory linear in
the batch (METHODS.md section 2: ASCL's ``L_SCL`` and ADR's global compactness; seed 003 ch. 3).

=========================  ============================================================
``supcon_loss``            the supervised contrastive loss of z [N, D] with a counterpart
                           (``pair``) per anchor and ASCL's selection strategies
``pairwise_compactness``   ADR's ``mean_{i,j} w_ij ‖f_i − f_j‖_p`` over all N² pairs
``two_view_pair``          ``pair`` for a batch laid out as [first views; second views]
=========================  ============================================================

Neither op builds an N × N matrix: the kernels walk the similarity matrix in tiles of at most
1024 × 1024 (cosine tiles are matrix products of the unit rows, l1/l2 tiles direct distances).
The forward keeps an online log-sum-exp per anchor (flash-attention's habit) and returns each
anchor's log-sum-exp and number of positives; the backward op (``_supcon_loss_backward``)
recomputes the tiles from them. Memory: the [N, D] rows, a few [N] vectors and two tiles.

Backends: C++ (CPU), CUDA C++, Triton and the reference (fastadv.backend); the schemas are in
csrc/ops.cpp, the per-tile math in csrc/include/fastadv/contrastive.h, the tile walk in
csrc/contrastive_glue.h. Training methods call :data:`unchecked`: the same ops without checks and
without host synchronisation.
"""
from __future__ import annotations

import math

import torch

from .. import _validate
from ..reference import contrastive as reference
from . import _registry

__all__ = ["supcon_loss", "pairwise_compactness", "two_view_pair"]

#: ASCL's selection strategies (seed 003 ch. 3, Table 1), in the order of their schema codes.
STRATEGIES = reference.STRATEGIES
#: Similarities of ``supcon_loss``, in the order of their schema codes.
SIMILARITIES = reference.SIMILARITIES
#: Reductions (ATen's numbering).
REDUCTIONS = reference.REDUCTIONS
#: The norms ‖·‖_p of ``pairwise_compactness``.
NORMS = reference.NORMS
#: Defaults of the seed: τ = 0.07 (ASCL, after Khosla et al. 2020); a = 0.99 and p = 2 (ADR).
DEFAULT_TAU = 0.07
DEFAULT_A = 0.99
DEFAULT_P = 2

two_view_pair = reference.two_view_pair

_OPS = ("supcon_loss", "pairwise_compactness")
_BACKWARD_OPS = ("_supcon_loss_backward", "_pairwise_compactness_backward")


def _code(choices, value) -> int:
    return choices.index(value)


# ----------------------------------------------------------------------------- validation
def _rows(op: str, name: str, value) -> torch.Tensor:
    _validate.tensor(op, name, value, dim=2)
    if value.shape[0] < 1 or value.shape[1] < 1:
        raise ValueError(f"{op}: {name} must have shape [N, D] with N >= 1 and D >= 1, got {list(value.shape)}")
    return value


def _indices(op: str, name: str, value, rows: torch.Tensor) -> torch.Tensor:
    return _validate.labels(op, value, batch=rows.shape[0], classes=None, device=rows.device, name=name)


def _check_values(op: str, labels: torch.Tensor, preds=None, pair=None) -> None:
    """Labels (and predictions) are class indices >= 0; ``pair`` is an involution of [0, N). One
    read of the device (none while torch.compile traces)."""
    if torch.compiler.is_compiling():
        return
    checks = [labels.min() < 0]
    if preds is not None:
        checks.append(preds.min() < 0)
    if pair is not None:
        n = pair.shape[0]
        in_range = (pair >= 0) & (pair < n)
        inverse = pair[pair.clamp(0, n - 1)] == torch.arange(n, device=pair.device)
        checks.append(~(in_range & inverse).all())
    failed = torch.stack(checks).tolist()
    if failed[0]:
        raise ValueError(f"{op}: labels must be class indices >= 0, got a minimum of {labels.min().item()}")
    if preds is not None and failed[1]:
        raise ValueError(f"{op}: preds must be class indices >= 0, got a minimum of {preds.min().item()}")
    if pair is not None and failed[-1]:
        raise ValueError(f"{op}: pair must be a permutation of [0, N) that is its own inverse (pair[pair[i]] == i: "
                         f"anchor i's other view, or i itself for none), got {pair.tolist()[:16]}"
                         f"{' ...' if pair.shape[0] > 16 else ''}")


# ----------------------------------------------------------------------------- dispatch
def _implementation(name: str, device: torch.device, dtype: torch.dtype, numel: int = 0):
    """The op that runs ``name`` here, or None for the reference."""
    return _FAMILY.kernel(name, device, dtype, True, numel)


def _long(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype is torch.int64 and t.is_contiguous() else t.to(torch.int64).contiguous()


# ----------------------------------------------------------------------------- the ops
def _supcon_loss(z: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, pair: torch.Tensor,
                 tau: float = DEFAULT_TAU, strategy: str = "global", sim: str = "cosine",
                 reduction: str = "mean") -> torch.Tensor:
    op = _implementation("supcon_loss", _registry.device_type(z), z.dtype, z.numel())
    if op is None:
        return reference.supcon_loss(z, labels, preds, pair, tau, strategy, sim, reduction)
    return op(z.contiguous(), _long(labels), _long(preds), _long(pair), float(tau), _code(STRATEGIES, strategy),
              _code(SIMILARITIES, sim), _code(REDUCTIONS, reduction))[0]


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, pair: torch.Tensor,
                tau: float = DEFAULT_TAU, strategy: str = "global", sim: str = "cosine",
                reduction: str = "mean") -> torch.Tensor:
    """ASCL's supervised contrastive loss ``L_SCL`` (METHODS.md section 2) of the N anchors z [N, D].

    Anchor i's candidates are every j ≠ i; ``pair[i]`` (its other view, e.g. the adversarial
    example of a clean image: :func:`two_view_pair`) is always a positive, and the others are
    positives, negatives or excluded by ``strategy`` from the labels y and the predictions p (of
    each sample's own view):

    ``global``: positives y_j = y_i, negatives y_j ≠ y_i; ``hard-ls``: negatives only those with
    pred_j = y_i; ``soft-ls``: negatives only those with pred_j = p_i; ``leaked-ls``: positives
    and negatives only those with pred_j = p_i.

    ``L_i = −(1/|P_i|) Σ_{j∈P_i} log(exp(s_ij/τ) / Σ_{k∈P_i∪N_i} exp(s_ik/τ))`` with ``s`` the
    cosine similarity (``sim="cosine"``) or ``−‖z_i − z_j‖_p`` (``"l1"``, ``"l2"``); reduced over
    the anchors by ``reduction`` (``"mean"``, ``"sum"``, ``"none"``: [N]). With the global strategy
    and cosine similarity over two views this is SupCon (Khosla et al. 2020). An anchor without a
    positive (``pair[i] == i`` and no other positive) has loss 0 and counts in the mean.
    Differentiable in z (once); the gradient at coinciding points of l1/l2 is 0.
    """
    op = "supcon_loss"
    _rows(op, "z", z)
    labels = _indices(op, "labels", labels, z)
    preds = _indices(op, "preds", preds, z)
    pair = _indices(op, "pair", pair, z)
    tau = _validate.number(op, "tau", tau, low=0.0, low_open=True)
    if not math.isfinite(tau):
        raise ValueError(f"{op}: tau must be a finite number > 0, got {tau!r}")
    strategy = _validate.choice(op, "strategy", strategy, STRATEGIES)
    sim = _validate.choice(op, "sim", sim, SIMILARITIES)
    reduction = _validate.choice(op, "reduction", reduction, REDUCTIONS)
    _check_values(op, labels, preds, pair)
    return _supcon_loss(z, labels, preds, pair, tau, strategy, sim, reduction)


def _pairwise_compactness(f: torch.Tensor, labels: torch.Tensor, a: float = DEFAULT_A,
                          p: int = DEFAULT_P) -> torch.Tensor:
    op = _implementation("pairwise_compactness", _registry.device_type(f), f.dtype, f.numel())
    if op is None:
        return reference.pairwise_compactness(f, labels, a, p)
    return op(f.contiguous(), _long(labels), float(a), int(p))


def pairwise_compactness(f: torch.Tensor, labels: torch.Tensor, a: float = DEFAULT_A, p: int = DEFAULT_P) -> torch.Tensor:
    """ADR's global compactness (seed 003 ch. 3, Eq. 3) of the representations f [N, D]:
    ``mean_{i,j} w_ij ‖f_i − f_j‖_p`` over all N² ordered pairs, ``w_ij = 1`` for the same label
    and ``(a − 1)/a`` otherwise (a = 0.99: −0.0101), a scalar of f's dtype. ``p`` is 1 or 2.
    Differentiable in f (once); the gradient at coinciding points is 0 (the norm's subgradient)."""
    op = "pairwise_compactness"
    _rows(op, "f", f)
    labels = _indices(op, "labels", labels, f)
    a = _validate.number(op, "a", a, low=0.0, low_open=True, high=1.0)
    if not isinstance(p, int) or isinstance(p, bool) or p not in NORMS:
        raise ValueError(f"{op}: p must be one of {NORMS}, got {p!r}")
    _check_values(op, labels)
    return _pairwise_compactness(f, labels, a, p)


# ----------------------------------------------------------------------------- torch.library
def _statistics_dtype(z: torch.Tensor) -> torch.dtype:
    return torch.float64 if z.dtype == torch.float64 else torch.float32


def _fake(name: str):
    if name == "supcon_loss":
        def supcon_fake(z, labels, preds, pair, tau, strategy, sim, reduction):
            n = z.shape[0]
            loss = z.new_empty((n,) if reduction == 0 else ())
            return loss, z.new_empty((n,), dtype=_statistics_dtype(z)), z.new_empty((n,), dtype=_statistics_dtype(z))
        return supcon_fake
    if name == "pairwise_compactness":
        return lambda f, labels, a, p: f.new_empty(())
    if name == "_supcon_loss_backward":
        return lambda grad_loss, z, *rest: torch.empty_like(z)
    return lambda grad, f, *rest: torch.empty_like(f)


def _supcon_autograd(backward_op):
    """(backward, setup_context) of supcon_loss: the backward op reads the rows, the indices and
    the forward's per-anchor log-sum-exp and positives."""

    def setup_context(ctx, inputs, output):
        z, labels, preds, pair, *scalars = inputs
        ctx.save_for_backward(z, labels, preds, pair, output[1], output[2])
        ctx.scalars = scalars

    def backward(ctx, grad_loss, _grad_lse, _grad_positives):
        z, labels, preds, pair, lse, positives = ctx.saved_tensors
        grad_z = backward_op(grad_loss.contiguous(), z, labels, preds, pair, lse, positives, *ctx.scalars)
        return (grad_z,) + (None,) * 7

    return backward, setup_context


def _autograd(backward_op_of):
    """The autograd of each forward op, calling its backward op ``backward_op_of(name)``."""

    def autograd(name: str):
        if name == "supcon_loss":
            return _supcon_autograd(lambda *a: backward_op_of("_supcon_loss_backward")(*a))
        if name == "pairwise_compactness":
            return _registry.backward_op_autograd(lambda *a: backward_op_of("_pairwise_compactness_backward")(*a))
        return None  # a backward op: differentiable once

    return autograd


_FAMILY = _registry.Family("contrastive")
_TRITON = _FAMILY.register(_OPS + _BACKWARD_OPS, fake=_fake, autograd=_autograd(lambda name: getattr(_TRITON, name))
                           ).triton
# The C++ ops' autograd is in C++ (csrc/autograd/contrastive.cpp); the Triton ops' is above.


#: The family's ops for callers that validated their arguments once (the training methods): no
#: checks, no host synchronisation. Same signatures as the public ops; the arguments must already
#: be what the public ops accept.
unchecked = _FAMILY.unchecked
for _function in (_supcon_loss, _pairwise_compactness):
    _FAMILY.unchecked_op(_function)
