"""The logits family: fused logit-head losses (METHODS.md sections 1 and 2).

Each op reads its [B, C] blocks of logits once per row and returns per-sample losses ([B];
``mhuber`` returns its mean, as seed 002 defines it; ``trades_kl`` also its batch mean or sum). When an input requires a gradient, the
same pass also computes the gradient of every sample's loss with respect to it (Liger-Kernel's
habit), so the backward is a single multiplication by the incoming gradient.

=========================  ============================================================
``soft_cross_entropy``     ``−Σ_j t_j log p_j(z)`` against soft targets t (LTD, LRM)
``smoothed_cross_entropy`` CE against ``1 − s`` on y and ``s/(C−1)`` elsewhere (seed 001)
``boosted_cross_entropy``  MART's BCE ``−log p_y − log(1 − max_{k≠y} p_k)``
``trades_kl``              ``KL(p(z_nat) ‖ p(z_adv))``
``mart_loss``              ``(BCE(p(z_adv), y), KL(p(z_nat) ‖ p(z_adv))·(1 − p_y(z_nat)))``
``margin_sq_hinge``        ``Σ_{j≠y} max(0, z_j − z_y + δ)²`` (seed 002's L')
``mhuber``                 seed 002's modified Huber loss (mHuber) of ``u − v``, mean over elements
``mhuber_moving_average``  ``mhuber`` between moving averages of u and v, which it updates (LMA)
``logit_pairing``          ``‖z_nat − z_adv‖²`` (ALP)
``logit_squeeze``          ``‖z‖²``
``masked_gram``            per sample, the Gram matrix of M members' vectors ``V`` [M, B, C] with the
                           true class masked out, each normalised first (ALS's masked cosine, ADP's
                           M̃ᵀM̃): [B, M, M]
=========================  ============================================================

Backends: C++ (CPU), CUDA C++, Triton and the reference (fastadv.backend). The family's op list,
schemas and row algorithms are in csrc/include/fastadv/logits.h; the autograd of the C++ ops is
in C++ (csrc/autograd/logits.cpp). ``masked_gram`` is a member op (FASTADV_LOGITS_MEMBER_OPS:
[M, B, C] in, [B, M, M] out): its backward is an op of its own, ``_masked_gram_backward``. Each op's layout (inputs, flags, outputs) is read from its
schema (fastadv/ops/_registry.py). Attack loops call :data:`unchecked`: the same ops without
the checks. The ops are
differentiable once (the gradient of a gradient is not supported). NaN in the logits
propagates to the loss of its sample. Ties in MART's ``max_{k≠y}`` share its gradient, as
torch's ``amax`` does.
"""
from __future__ import annotations

import functools
import math

import torch

from .. import _validate
from ..kernels.limits import LOGITS_MAX_COLUMNS
from ..reference import logits as reference
from . import _registry

#: The widest rows the Triton kernels take (kernels/limits.py): ``auto`` runs wider ones on the
#: CUDA C++ kernels.
TRITON_MAX_COLUMNS = LOGITS_MAX_COLUMNS
#: The most members ``masked_gram`` takes (kMaxMembers in csrc/include/fastadv/logits.h: the
#: kernels keep a sample's M×M matrices on the stack or in shared memory).
MAX_MEMBERS = 32
#: masked_gram's guard: u / max(‖u‖, eps), torch.nn.functional.normalize's convention.
MASKED_GRAM_EPS = reference.MASKED_GRAM_EPS

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}  # at::Reduction's numbering
_ELEMENT_MEAN = 3  # the schemas' reduction code for the mean over all elements (mhuber)

#: The family's ops for callers that validated their arguments once, where they entered (the
#: attacks' loops): no checks, no host synchronisation. Same signatures as the public ops, with
#: labels already a contiguous int64 tensor whose entries lie in [0, C). Every op of the family
#: is here (each ``_<op>`` below is registered as ``unchecked.<op>`` by ``@_FAMILY.unchecked_op``).
_FAMILY = _registry.Family("logits")
unchecked = _FAMILY.unchecked


# ----------------------------------------------------------------------------- validation
def _logits(op: str, name: str, z, like=None, like_name: str = "z") -> torch.Tensor:
    """Logits [B, C] with at least one class, or a tensor like ``like``: metadata only."""
    if like is not None:
        return _validate.tensor(op, name, z, like=like, like_name=like_name)
    _validate.tensor(op, name, z, dim=2)
    if z.shape[1] < 1:
        raise ValueError(f"{op}: {name} must have at least one class, got shape {list(z.shape)}")
    return z


def _classes_at_least(op: str, z: torch.Tensor, classes: int) -> None:
    if z.shape[1] < classes:
        raise ValueError(f"{op}: needs at least {classes} classes, got logits of shape {list(z.shape)}")


def _labels(op: str, y, z: torch.Tensor) -> torch.Tensor:
    return _validate.labels(op, y, batch=z.shape[0], classes=z.shape[1], device=z.device)


@functools.lru_cache(maxsize=256)
def _elementwise_rows(shape) -> tuple[int, int] | None:
    """The [rows, cols] view the mhuber kernels get of a tensor of ``shape``, or None where they
    take it as it is (a [rows, cols] tensor already). mhuber is elementwise with one mean over
    every element, so any split into rows gives the same loss; rows of whole 16-element vectors
    (up to 1024 elements) spare the kernels the scalar tail each short row (a [B, 100] one) would
    end in. The split depends on the shape alone, so the summation order, and the result, do not
    change from call to call."""
    count, rows = math.prod(shape), shape[0]
    for width in (1024, 512, 256, 128, 64, 32, 16):
        if count % width == 0:
            split = count // width, width
            break
    else:
        split = rows, count // rows
    return None if tuple(shape) == split else split


# ----------------------------------------------------------------------------- dispatch
def _implementation(name: str, device: torch.device, dtype: torch.dtype, columns: int = 0, numel: int = 0):
    """The op that runs ``name`` here, or None for the reference: ``auto`` leaves rows wider than
    the Triton kernels take to the CUDA C++ kernels (``columns``: the rows' width; the member
    ops' Triton kernels loop over the columns and take any)."""
    return _FAMILY.kernel(name, device, dtype, columns <= TRITON_MAX_COLUMNS, numel)


def _run(name: str, inputs: tuple, rest: tuple):
    """The fused op's outputs (losses and extras) for differentiable ``inputs`` followed by the
    schema's other arguments ``rest``, or None where the reference runs. The op's flags ask for
    each input's gradient when autograd will want it."""
    first = inputs[0]
    op = _implementation(name, _registry.device_type(first), first.dtype, first.shape[-1], first.numel())
    if op is None:
        return None
    # the op makes its inputs contiguous and sets its grad_<input> flags (_registry.fast_op)
    outputs = op(*inputs, *rest)
    returned = _RETURNED[name]
    return outputs if returned == len(outputs) else outputs[:returned]


# ----------------------------------------------------------------------------- the ops
@_FAMILY.unchecked_op
def _soft_cross_entropy(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    result = _run("soft_cross_entropy", (z, target), ())
    return reference.soft_cross_entropy(z, target) if result is None else result[0]


def soft_cross_entropy(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``−Σ_j t_j log softmax(z)_j`` per sample ([B]); ``target`` [B, C] (soft labels, e.g. a
    teacher's probabilities) may require a gradient too."""
    op = "soft_cross_entropy"
    _logits(op, "target", target, _logits(op, "z", z))
    return _soft_cross_entropy(z, target)


@_FAMILY.unchecked_op
def _smoothed_cross_entropy(z: torch.Tensor, y: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    result = _run("smoothed_cross_entropy", (z,), (y, float(smoothing)))
    return reference.smoothed_cross_entropy(z, y, smoothing) if result is None else result[0]


def smoothed_cross_entropy(z: torch.Tensor, y: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """Cross-entropy per sample against seed 001's smoothed labels: ``1 − s`` on y and
    ``s / (C − 1)`` on each other class (torch's ``label_smoothing`` spreads s/C over all)."""
    op = "smoothed_cross_entropy"
    _logits(op, "z", z)
    _classes_at_least(op, z, 2)
    y = _labels(op, y, z)
    smoothing = _validate.number(op, "smoothing", smoothing, low=0.0, high=1.0)
    return _smoothed_cross_entropy(z, y, smoothing)


@_FAMILY.unchecked_op
def _boosted_cross_entropy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    result = _run("boosted_cross_entropy", (z,), (y,))
    return reference.boosted_cross_entropy(z, y) if result is None else result[0]


def boosted_cross_entropy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MART's boosted cross-entropy per sample: ``−log p_y − log(1 − max_{k≠y} p_k)``, the last
    argument clamped at 1e-4 from below (MART's code adds 1e-4)."""
    op = "boosted_cross_entropy"
    _logits(op, "z", z)
    _classes_at_least(op, z, 2)
    return _boosted_cross_entropy(z, _labels(op, y, z))


@_FAMILY.unchecked_op
def _trades_kl(z_nat: torch.Tensor, z_adv: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    result = _run("trades_kl", (z_nat, z_adv), (_REDUCTIONS[reduction],))
    return reference.trades_kl(z_nat, z_adv, reduction) if result is None else result[0]


def trades_kl(z_nat: torch.Tensor, z_adv: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    """``KL(p(z_nat) ‖ p(z_adv))`` per sample ([B]), or its ``"mean"`` or ``"sum"`` over the
    batch (a scalar); differentiable in both (TRADES).

    Prefer ``reduction="mean"`` to ``.mean()`` of the per-sample losses: the op then computes
    the gradients of the mean itself, and a backward that reaches it with gradient 1 (the loss
    is the mean KL, as in ``trades_kl(a, b, "mean").backward()``) returns them without another
    pass over [B, C] (Liger-Kernel's habit)."""
    op = "trades_kl"
    _logits(op, "z_adv", z_adv, _logits(op, "z_nat", z_nat), "z_nat")
    _validate.choice(op, "reduction", reduction, _REDUCTIONS)
    return _trades_kl(z_nat, z_adv, reduction)


@_FAMILY.unchecked_op
def _mart_loss(z_nat: torch.Tensor, z_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    result = _run("mart_loss", (z_nat, z_adv), (y,))
    return reference.mart_loss(z_nat, z_adv, y) if result is None else tuple(result)


def mart_loss(z_nat: torch.Tensor, z_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MART's two terms per sample: ``(BCE(p(z_adv), y), KL(p(z_nat) ‖ p(z_adv))·(1 − p_y(z_nat)))``;
    the method adds ``mean(BCE) + λ·mean(weighted KL)``. The weight is not detached (MART's code)."""
    op = "mart_loss"
    _logits(op, "z_adv", z_adv, _logits(op, "z_nat", z_nat), "z_nat")
    _classes_at_least(op, z_nat, 2)
    return _mart_loss(z_nat, z_adv, _labels(op, y, z_nat))


@_FAMILY.unchecked_op
def _margin_sq_hinge(z: torch.Tensor, y: torch.Tensor, delta: float = 0.9) -> torch.Tensor:
    result = _run("margin_sq_hinge", (z,), (y, float(delta)))
    return reference.margin_sq_hinge(z, y, delta) if result is None else result[0]


def margin_sq_hinge(z: torch.Tensor, y: torch.Tensor, delta: float = 0.9) -> torch.Tensor:
    """``Σ_{j≠y} max(0, z_j − z_y + δ)²`` per sample (seed 002's margin loss, δ = 0.9)."""
    op = "margin_sq_hinge"
    _logits(op, "z", z)
    y = _labels(op, y, z)
    return _margin_sq_hinge(z, y, _validate.number(op, "delta", delta))


def _as_rows(t: torch.Tensor, split) -> torch.Tensor:
    """``t`` as [rows, cols] (a view where it can be; ``split`` None: as it is)."""
    if split is None:
        return t
    return t.view(split) if t.is_contiguous() else t.reshape(split)


def _constant(t: torch.Tensor) -> torch.Tensor:
    return t.detach() if t.requires_grad else t


@_FAMILY.unchecked_op
def _mhuber(u: torch.Tensor, v: torch.Tensor, alpha: float) -> torch.Tensor:
    if not u.numel():
        return reference.mhuber(u, v, alpha)
    split = _elementwise_rows(u.shape)
    result = _run("mhuber", (_as_rows(u, split), _as_rows(v, split)), (float(alpha), _ELEMENT_MEAN))
    return reference.mhuber(u, v, alpha) if result is None else result[0]


def mhuber(u: torch.Tensor, v: torch.Tensor, alpha: float) -> torch.Tensor:
    """Seed 002's modified Huber loss, a scalar: with ``d = u − v`` elementwise,
    ``α²(1 − cos(d/α))`` where ``|d|/α ≤ π/2``, else ``α|d| + (1 − π/2)α²``; mean over all
    elements. ``u`` and ``v`` have any one shape with a leading batch dimension."""
    op = "mhuber"
    _validate.tensor(op, "v", v, like=_validate.tensor(op, "u", u, min_dim=1), like_name="u")
    return _mhuber(u, v, _validate.number(op, "alpha", alpha, low=0.0, low_open=True))


@_FAMILY.unchecked_op
def _mhuber_moving_average(u: torch.Tensor, v: torch.Tensor, u_average: torch.Tensor, v_average: torch.Tensor,
                           tau: float, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not u.numel():
        return reference.mhuber_moving_average(u, v, u_average, v_average, tau, alpha)
    split = _elementwise_rows(u.shape)
    result = _run("mhuber_moving_average", (_as_rows(u, split), _as_rows(v, split)),
                  (_as_rows(_constant(u_average), split), _as_rows(_constant(v_average), split),
                   float(alpha), float(tau), _ELEMENT_MEAN))
    if result is None:
        return reference.mhuber_moving_average(u, v, u_average, v_average, tau, alpha)
    loss, u_next, v_next = result
    if split is None:
        return loss, u_next, v_next
    return loss, u_next.view(u.shape), v_next.view(u.shape)


def mhuber_moving_average(u: torch.Tensor, v: torch.Tensor, u_average: torch.Tensor, v_average: torch.Tensor,
                          tau: float, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LMA's regulariser (seed 002): the moving averages ``ū = τ·sg(u_average) + (1 − τ)·u`` and
    ``v̄ = τ·sg(v_average) + (1 − τ)·v`` and ``mhuber(ū, v̄, α)``, in one pass.

    Returns ``(loss, ū, v̄)``; ū and v̄ are detached, the state to pass as the averages of the
    next batch. The gradient reaches u and v only (through the factor 1 − τ).
    """
    op = "mhuber_moving_average"
    _logits(op, "u", u)
    for name, t in (("v", v), ("u_average", u_average), ("v_average", v_average)):
        _logits(op, name, t, u, "u")
    tau = _validate.number(op, "tau", tau, low=0.0, high=1.0)
    alpha = _validate.number(op, "alpha", alpha, low=0.0, low_open=True)
    return _mhuber_moving_average(u, v, u_average, v_average, tau, alpha)


@_FAMILY.unchecked_op
def _logit_pairing(z_nat: torch.Tensor, z_adv: torch.Tensor) -> torch.Tensor:
    result = _run("logit_pairing", (z_nat, z_adv), ())
    return reference.logit_pairing(z_nat, z_adv) if result is None else result[0]


def logit_pairing(z_nat: torch.Tensor, z_adv: torch.Tensor) -> torch.Tensor:
    """``‖z_nat − z_adv‖²`` per sample (adversarial logit pairing, seed 001 Eq. 2)."""
    op = "logit_pairing"
    _logits(op, "z_adv", z_adv, _logits(op, "z_nat", z_nat), "z_nat")
    return _logit_pairing(z_nat, z_adv)


@_FAMILY.unchecked_op
def _logit_squeeze(z: torch.Tensor) -> torch.Tensor:
    result = _run("logit_squeeze", (z,), ())
    return reference.logit_squeeze(z) if result is None else result[0]


def logit_squeeze(z: torch.Tensor) -> torch.Tensor:
    """``‖z‖²`` per sample (logit squeezing, seed 001)."""
    return _logit_squeeze(_logits("logit_squeeze", "z", z))


@_FAMILY.unchecked_op
def _masked_gram(V: torch.Tensor, y: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    op = _implementation("masked_gram", _registry.device_type(V), V.dtype, 0, V.numel())
    return reference.masked_gram(V, y, normalize) if op is None else op(V.contiguous(), y, bool(normalize))


def masked_gram(V: torch.Tensor, y: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Per sample, the Gram matrix of the M members' vectors with the true class masked out:
    ``V`` [M, B, C] (each member's logits or probabilities), ``y`` [B] → ``G`` [B, M, M],
    ``G[b, m, n] = ⟨û_m, û_n⟩`` with ``u_m = V[m, b] ⊙ (1 − onehot(y_b))`` and, when
    ``normalize``, ``û_m = u_m / max(‖u_m‖₂, eps)``, eps = 1e-12
    (torch.nn.functional.normalize's convention; ``û_m = u_m`` otherwise).

    Off the diagonal this is adversarial logit separation's masked cosine cos_m(a, b) (seed 000)
    when V are logits; on probabilities it is ADP's M̃ᵀM̃. An all-zero masked vector (C = 2 with
    the other class at 0, or all-zero logits) normalises to the zero vector: its row and column
    of G are 0 (the diagonal entry too, not 1), and its gradient is finite, the eps branch of
    the max (dÛ / eps). Accumulates in float32 (float64 for float64 V); G has V's dtype.
    Differentiable in V; 1 to :data:`MAX_MEMBERS` members."""
    op = "masked_gram"
    _validate.tensor(op, "V", V, dim=3)
    if not 1 <= V.shape[0] <= MAX_MEMBERS or V.shape[2] < 1:
        raise ValueError(f"{op}: V must have shape [M, B, C] with 1 to {MAX_MEMBERS} members and at least one "
                         f"class, got shape {list(V.shape)}")
    y = _validate.labels(op, y, batch=V.shape[1], classes=V.shape[2], device=V.device)
    return _masked_gram(V, y, _validate.flag(op, "normalize", normalize))


# ----------------------------------------------------------------------------- torch.library
#: The family's public ops: one per fused op, named like it.
__all__ = sorted(vars(unchecked))
#: The member ops (FASTADV_LOGITS_MEMBER_OPS in logits.h: V [M, B, C] in, [B, M, M] out), each with
#: its backward op ``_<op>_backward``; the other ops are the row ops, laid out by their schemas.
_MEMBER_OPS = ("masked_gram",)
_BACKWARD_OPS = tuple(f"_{name}_backward" for name in _MEMBER_OPS)
_ROW_OPS = tuple(name for name in __all__ if name not in _MEMBER_OPS)


def _fake(name: str):
    if name in _MEMBER_OPS:
        return _registry.member_fake
    if name in _BACKWARD_OPS:
        return _registry.member_backward_fake
    # The saved gradients are in the accumulation type (csrc/include/fastadv/logits.h,
    # store_gradient): float32 for half inputs, rounded to the input's type once, by autograd.
    return _registry.loss_fake(name, accumulated_gradients=True)


def _triton_autograd(name: str):
    if name in _MEMBER_OPS:
        return _registry.backward_op_autograd(lambda *args: getattr(_TRITON, f"_{name}_backward")(*args))
    if name in _BACKWARD_OPS:
        return None  # the ops are differentiable once
    return _registry.saved_gradient_autograd(name)


# How many outputs the row ops return: the losses and the extras, not the gradients.
_RETURNED = {name: _registry.layout(name).losses + _registry.layout(name).extras for name in _ROW_OPS}

_TRITON = _FAMILY.register(__all__ + list(_BACKWARD_OPS), fake=_fake, autograd=_triton_autograd).triton
